"""Test helper shared by the job tests: kill a worker while it holds a shard's claim."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_holding(proc: subprocess.Popen, claim: Path, timeout_s: float = 60.0) -> None:
    """SIGKILL `proc` once `claim` exists with its contents written (a whole claim, not one cut mid-creation)."""
    deadline = time.time() + timeout_s
    while not (claim.exists() and claim.read_text()):
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, f"no claim within {timeout_s:.0f} s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
