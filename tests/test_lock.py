"""`make install` installs requirements-dev.lock exactly: every pinned version, nothing else, no pre-release."""

import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
OUR_PACKAGE = "l0-sparse"


def read_lock(path: Path) -> dict[str, str]:
    """Package name (canonical) -> pinned version, from a pip-compile output file."""
    pins = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.match(line)
        if not match:
            raise AssertionError(f"{path}:{line_no}: not a `name==version` pin: {line!r}")
        pins[canonicalize_name(match[1])] = match[2]
    return pins


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-dev.lock"])
def test_locks_pin_final_releases_only(lock):
    pins = read_lock(ROOT / lock)
    assert "torch" in pins and "lightning" in pins
    pre = {name: version for name, version in pins.items() if Version(version).is_prerelease}
    assert not pre, f"{lock} pins pre-releases {pre}: constrain them in lock-constraints.txt and run make lock"


def test_runtime_lock_is_part_of_dev_lock():
    runtime, dev = read_lock(ROOT / "requirements.lock"), read_lock(ROOT / "requirements-dev.lock")
    differ = {n: (v, dev.get(n)) for n, v in runtime.items() if dev.get(n) != v}
    assert not differ, f"requirements.lock and requirements-dev.lock disagree (runtime, dev): {differ}"


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="checks the .venv that make install builds; this interpreter is another environment",
)
def test_installed_environment_equals_the_lock():
    pins = read_lock(ROOT / "requirements-dev.lock")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    installed.pop(OUR_PACKAGE, None)
    wrong = {
        n: f"installed {installed.get(n, 'nothing')}, locked {v}" for n, v in pins.items() if installed.get(n) != v
    }
    extra = sorted(set(installed) - set(pins))
    assert not wrong, f"the .venv differs from requirements-dev.lock (run make install): {wrong}"
    assert not extra, f"installed, not in requirements-dev.lock (run make install, or add to pyproject): {extra}"
