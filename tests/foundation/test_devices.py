"""lmforge.devices.tune_host_allocator: glibc's malloc thresholds fixed once per process, opt-out by environment."""

from __future__ import annotations

import subprocess
import sys

import pytest

CODE = "from lmforge.devices import tune_host_allocator as t; print(t(), t())"


def _run(env_value: str | None) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_MALLOC"}
    if env_value is not None:
        env["LMFORGE_MALLOC"] = env_value
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_allocator_is_tuned_once_unless_opted_out():
    import ctypes

    if not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"):
        pytest.skip("not glibc")
    assert _run(None) == "True True"
    assert _run("default") == "False False"
