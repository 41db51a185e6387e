"""What the benchmark scripts share: a measurement in a fresh interpreter, timing, memory, the machine's facts and
the result file. The scripts run as `python benchmarks/<name>.py` and put the repository root on sys.path to
import it. torch is imported only where a device needs it, so a script that measures no tensors (prepared_scale.py)
measures its memory without torch loaded.

Memory on the CPU: `PeakMemory` is the process's peak resident set (VmHWM) above the resident set at its
construction; it also counts what glibc's allocator keeps after a free, which varies from run to run.
`live_peak_mib` measures one more call with glibc's default thresholds restored (large blocks mmapped and given
back on free), so its peak follows the call's live tensors. On CUDA both are torch's allocator statistics.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from src.common.io import atomic_write_json

if TYPE_CHECKING:
    import torch

ROOT = Path(__file__).resolve().parents[1]
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt options
GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def log(message: str) -> None:
    """Progress goes to stderr with the time, so stdout carries only the results."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- timing ---------------------------------------------------------------------------------------------------


def synchronize(device: torch.device | None) -> None:
    """Waits for the device's queued work (CUDA); None (no device) and the CPU have none."""
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | None = None) -> tuple[float, Any]:
    """Seconds of one call of fn (the device's queue drained before and after) and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def repeated(fn: Callable[[], Any], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Seconds of each of `reps` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    return [timed(fn, device)[0] for _ in range(reps)]


# --- memory ---------------------------------------------------------------------------------------------------


def proc_status_mib(field: str) -> float:
    """VmRSS (resident set) or VmHWM (its peak) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_mib() -> float:
    return proc_status_mib("VmRSS")


def maxrss_mib() -> float:
    """The process's peak resident set so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class PeakMemory:
    """Peak memory above the moment of construction, MiB (see the module docstring)."""

    def __init__(self, device: torch.device):
        import torch

        self.device = device
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.loaded = torch.cuda.memory_allocated(device) / 2**20
            self.peak_before = self.loaded
        else:
            self.loaded = rss_mib()
            self.peak_before = maxrss_mib()  # above `loaded` would mean an earlier peak could hide this one

    def peak(self) -> float:
        import torch

        synchronize(self.device)
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.loaded
        return maxrss_mib() - self.loaded

    def record(self) -> dict[str, float]:
        return {"peak_mib": self.peak(), "loaded_mib": self.loaded, "peak_before_mib": self.peak_before}


def live_peak_mib(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Peak resident memory of one more, untimed call of fn above the resident set before it, MiB, with
    glibc's default thresholds restored: blocks of 128 KiB and more are then mmapped and returned on free,
    so the peak follows the call's live tensors. The kept-heap peak of PeakMemory also holds the heap's
    fragmentation, which varies from run to run (see the module docstring). None where it cannot be taken
    (CUDA, where max_memory_allocated is live already; no glibc; no /proc/self/clear_refs)."""
    if device.type != "cpu":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)  # hand the kept free memory back first
        for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD):
            libc.mallopt(option, GLIBC_DEFAULT_THRESHOLD)
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now
    except (OSError, AttributeError):
        return None
    before = rss_mib()
    fn()
    return proc_status_mib("VmHWM") - before


def cuda_peak_mib(fn: Callable[[], Any], device: torch.device) -> tuple[float | None, float | None]:
    """(peak above what was allocated before, absolute peak) of one call of fn in MiB; (None, None) off CUDA."""
    if device.type != "cuda":
        fn()
        return None, None
    import torch

    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    return (peak - base) / 2**20, peak / 2**20


# --- the machine ----------------------------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def machine(device: torch.device, **versions: str) -> dict[str, Any]:
    """The facts a result is read against: CPU, cores, device, GPU, Python, torch, `versions` (other packages
    measured), platform."""
    import torch

    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **versions,
        "platform": platform.platform(),
    }


# --- results and isolation ------------------------------------------------------------------------------------


def json_number(x: Any) -> Any:
    """A JSON-safe number: tensors (and numpy scalars) as Python numbers, nan and inf as None."""
    if hasattr(x, "item") and not isinstance(x, (int, float)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_result(path: Path, result: Any) -> Path:
    """The result file, all or nothing (a killed run leaves the previous one)."""
    atomic_write_json(Path(path), result)
    return Path(path)


def spawn(
    script: str | Path, spec: Mapping[str, Any], out: Path, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Runs `python script --worker SPEC` in a fresh interpreter (nothing an earlier measurement allocated, loaded
    or compiled carries over), with `spec` plus `"out": out` as JSON; the worker writes its record to `out`.
    Returns that record, or {"error": ...} when the worker failed (its stderr is shown as it runs)."""
    spec = {**spec, "out": str(out)}
    done = subprocess.run([sys.executable, str(script), "--worker", json.dumps(spec)], cwd=ROOT, env=env)
    if done.returncode != 0:
        worker = f"{spec.get('task', '')} {spec.get('impl', '')}"
        return {"error": f"worker {worker} exited {done.returncode} (stderr above)"}
    return json.loads(Path(out).read_text())


@contextlib.contextmanager
def competing_process(code: str, env: Mapping[str, str] | None = None, settle_s: float = 2.0):
    """A process running `code` on the same cores for the duration of the block (measurements under load); it
    starts `settle_s` before the block, past its imports."""
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    time.sleep(settle_s)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()
