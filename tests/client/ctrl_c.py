"""Helpers of the Ctrl-C tests: a real ``neqforce simulate`` process in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: Seconds a process may take to exit after Ctrl-C before the test calls it a hang (generous: a loaded
#: 2-core machine; the client bounds its own shutdown to a few seconds).
EXIT_LIMIT_S = 60.0


def _sigint_default() -> None:
    """In the child: Ctrl-C as in a terminal, even when pytest was started with SIGINT ignored (nohup)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sigint_ignored(pid: int) -> bool:
    """True when the process ``pid`` ignores SIGINT (SigIgn mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            mask = next(int(line.split()[1], 16) for line in fh if line.startswith("SigIgn:"))
    except (OSError, StopIteration):
        return False
    return bool(mask & (1 << (signal.SIGINT - 1)))


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    exit_s: float  # seconds from the SIGINT to the exit


class Simulate:
    """A running ``neqforce simulate`` with its output collected by reader threads."""

    def __init__(self, args: list[str]) -> None:
        # -X faulthandler: a hang is diagnosed with SIGABRT (every thread's stack on stderr)
        cmd = [sys.executable, "-X", "faulthandler", "-c",
               "from neqforce.cli import app; app(prog_name='neqforce')", "simulate", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                                     preexec_fn=_sigint_default)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, buf), daemon=True)
                         for s, buf in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for r in self._readers:
            r.start()

    @staticmethod
    def _read(stream, buf: list[str]) -> None:
        for line in stream:
            buf.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return "".join(self.out)

    def interrupt(self) -> Finished:
        """SIGINT to the process group (a terminal's Ctrl-C), then wait for the exit."""
        assert not _sigint_ignored(self.pid), (
            "SIGINT is ignored in the neqforce process (was the test run started with SIGINT ignored, e.g. "
            "under nohup, and the reset failed?); Ctrl-C cannot be tested")
        os.killpg(self.pid, signal.SIGINT)
        t0 = time.monotonic()
        try:
            self.proc.wait(timeout=EXIT_LIMIT_S)
        except subprocess.TimeoutExpired:
            os.kill(self.pid, signal.SIGABRT)  # faulthandler prints the stacks
            time.sleep(3)
            self.kill()
            for r in self._readers:
                r.join(timeout=10)
            raise AssertionError(f"no exit {EXIT_LIMIT_S:g} s after Ctrl-C (a hang); stderr so far:\n"
                                 + "".join(self.err)) from None
        exit_s = time.monotonic() - t0
        for r in self._readers:
            r.join(timeout=10)
        return Finished(self.proc.returncode, "".join(self.out), "".join(self.err), exit_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


def start_simulate(args: list[str]) -> Simulate:
    return Simulate(args)


def interrupt_when(sim: Simulate, ready: Callable[[], bool], limit_s: float = 600.0) -> Finished:
    """Wait until ``ready()`` (polled) while the process runs, then Ctrl-C it; the process is killed if
    anything fails."""
    try:
        deadline = time.monotonic() + limit_s
        while not ready():
            assert sim.proc.poll() is None, f"the run ended before its Ctrl-C:\n{''.join(sim.err)}"
            assert time.monotonic() < deadline, "the run did not get ready in time"
            time.sleep(0.05)
        return sim.interrupt()
    finally:
        sim.kill()
