"""Process-wide defaults that `import src` applies before torch loads."""

import os
import subprocess
import sys

from tests.conftest import ROOT

PRINT_POLICY = "import src, torch, os; print(os.environ['OMP_WAIT_POLICY'])"


def test_import_src_makes_openmp_threads_wait_passively_unless_the_environment_says_otherwise():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", PRINT_POLICY], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "PASSIVE", run.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    run = subprocess.run([sys.executable, "-c", PRINT_POLICY], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.stdout.strip() == "ACTIVE", run.stderr


def test_keep_freed_memory_is_skipped_when_the_environment_says_0(monkeypatch):
    from src.common import runtime

    monkeypatch.setenv(runtime.KEEP_FREED_MEMORY_ENV, "0")
    assert runtime.keep_freed_memory() is False
    monkeypatch.delenv(runtime.KEEP_FREED_MEMORY_ENV)
    assert runtime.keep_freed_memory() is sys.platform.startswith("linux")  # glibc here; the setting is idempotent
