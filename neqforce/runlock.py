"""One writer per output folder: an exclusive advisory lock held while a run writes there.

Two ``neqforce simulate`` (or ``sweep``) processes writing the same ``--out`` would each write their
checkpoints into the other's file. A run holds ``FOLDER/.neqforce.lock`` (``fcntl.flock``, exclusive,
released by the kernel when the process ends however it ends: no stale locks); a second writer is refused
with one line naming the holder.

    with FolderLock(out, "--out") as lock:   # taken now if the folder exists
        ...
        out.mkdir(parents=True, exist_ok=True)
        lock.acquire()                       # taken once the folder exists (no-op if held)

Advisory: it protects neqforce writers from each other, not from other programs. Where ``fcntl`` does not
exist (Windows) it does nothing.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

#: Name of the lock file inside the folder.
LOCK_NAME = ".neqforce.lock"


class FolderBusy(ValueError):
    """Another neqforce process holds the folder's lock."""


class FolderLock:
    """Exclusive lock on ``folder`` for the life of the ``with`` block (see the module docstring).
    ``option`` names the command-line option the folder came from, for the message; ``name`` is the lock
    file (one folder may hold several outputs, each with its own lock) and ``target`` what it protects."""

    def __init__(self, folder: str | os.PathLike[str], option: str = "--out", *, name: str = LOCK_NAME,
                 target: str | os.PathLike[str] | None = None) -> None:
        self.folder = Path(folder)
        self.option = option
        self.name = name
        self.target = Path(target) if target is not None else self.folder
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (the folder must exist); FolderBusy if another process holds it."""
        if self._fd is not None or fcntl is None:
            return
        fd = os.open(self.folder / self.name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise FolderBusy(f"{self.target} is being written by another neqforce process"
                             f"{f' ({holder})' if holder else ''}; wait for it to end, or choose another "
                             f"{self.option}") from None
        except BaseException:
            os.close(fd)
            raise
        stamp = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        if self.folder.is_dir():
            self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
