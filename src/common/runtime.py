"""Process-wide settings: fast CPU training and encoding, fair sharing of a busy CPU, and a quiet terminal."""

import ctypes
import ctypes.util
import logging
import os
import sys
import warnings

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 2**31 - 1  # mallopt takes an int


# What our processes run with unless the environment says otherwise. OMP_WAIT_POLICY=PASSIVE: at the end of each
# parallel region a thread that is done sleeps instead of spinning (libgomp's default spins for a while). On a CPU
# shared with another busy process the spinning burns the time slice its straggling peer needs: measured on 2
# cores beside a 2-thread torch matmul loop, encoding kept 26% of its idle docs/s spinning, 54% passive; a
# training step 24-34% and 58-63%; idle, passive costs 10-16% (BENCHMARKS.md, "A shared CPU").
THREAD_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
APPLIED: dict[str, str] = {}  # those set_thread_defaults put into os.environ (the environment had not set them)


def set_thread_defaults() -> bool:
    """Applies THREAD_DEFAULTS where the environment does not set them; OpenMP reads them once, when torch loads,
    so this works only before the first `import torch` (`import src` does it first in every entry point).
    Returns False when torch was already imported (then the defaults apply to child processes only)."""
    for name, value in THREAD_DEFAULTS.items():
        if name not in os.environ:
            os.environ[name] = APPLIED[name] = value
    return "torch" not in sys.modules


# Set to 0 to keep glibc's own allocator thresholds (the benchmarks give it to the peers they compare with).
KEEP_FREED_MEMORY_ENV = "L0_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed blocks of up to 2 GiB in the heap instead of unmapping them.

    Each step allocates (B*L, V) logits of hundreds of MB; by default glibc mmaps and unmaps
    them every time and the kernel zeroes fresh pages on each touch. Measured on 2 cores: a
    16 x 256 training step 2.0 s -> 1.15 s, encoding 24 x 330 tokens 1.16 s -> 0.81 s.
    Returns False where there is no glibc (macOS, musl), which then keeps its defaults, and where
    the environment sets L0_KEEP_FREED_MEMORY=0.
    """
    if not sys.platform.startswith("linux") or os.environ.get(KEEP_FREED_MEMORY_ENV) == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES) and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
    except (OSError, AttributeError):
        return False


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def quiet_dependencies() -> None:
    """Silences what dependencies print about themselves on every run, not about our calls (those we fix).

    pytest does not see these filters (it resets them per test): pyproject.toml's filterwarnings repeats the first.
    """
    # Lightning 2.6's own pytree helper uses torch's LeafSpec, deprecated in torch 2.13; nothing we call can avoid it.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")
    # Lightning advertises its LitLogger / litmodels services at every Trainer start.
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropTips())
