"""Helper of the Ctrl-C tests of the training commands: a real ``neqforce`` process, interrupted once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def neqforce_exe() -> str:
    """The ``neqforce`` console script of this interpreter."""
    beside = Path(sys.executable).with_name("neqforce")
    return str(beside) if beside.exists() else (shutil.which("neqforce") or "neqforce")


def interrupt_when(args: list[str], trigger: Callable[[str], bool], settle_s: float = 0.0,
                   timeout: float = 60.0) -> tuple[int, str]:
    """Run ``neqforce ARGS``, send SIGINT ``settle_s`` after the first output line for which ``trigger`` is
    true, and wait up to ``timeout`` s for the exit; (return code, stdout and stderr together)."""
    proc = subprocess.Popen([neqforce_exe(), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if trigger(line):
                time.sleep(settle_s)
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, "".join(lines) + rest
