"""Ctrl-C for long client jobs: never lost, never half-done, never a hang.

:class:`Interrupts` replaces the SIGINT handler of the main thread for the duration of a job:

* the first Ctrl-C raises KeyboardInterrupt at once, except inside :meth:`Interrupts.critical`
  sections (recording a step, writing a checkpoint, closing gRPC objects), where it is raised when
  the section ends. It is also *remembered*: :meth:`Interrupts.check` raises it again at the next
  safe point, so an interrupt whose exception was swallowed (a ``__del__``, a library's
  ``except BaseException``) still stops the run instead of letting it finish with exit 0;
* a second Ctrl-C (the user insisting while the job shuts down) exits at once with status 130,
  after saying so — everything up to the last checkpoint is already on disk;
* :meth:`Interrupts.deadline` bounds a shutdown phase: if it has not ended after ``seconds``, the
  process exits with 130 (a gRPC channel whose close was broken by an earlier interrupt may
  otherwise wait for ever on its Condition).

Outside the main thread, and where SIGINT is ignored (``nohup``), it changes nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

#: Exit status of a job stopped by Ctrl-C (128 + SIGINT), the shell convention.
EXIT_INTERRUPTED = 130

_ACTIVE: Interrupts | None = None


def active() -> Interrupts | None:
    """The installed :class:`Interrupts` of this process, if any."""
    return _ACTIVE


def safe_point() -> None:
    """A safe point of a library loop (an epoch written, a stage finished): raise the Ctrl-C the active
    job received, also one whose exception was swallowed (:meth:`Interrupts.check`); nothing without a job."""
    if _ACTIVE is not None:
        _ACTIVE.check()


def surfaced_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` (not itself a KeyboardInterrupt) is how the active job's Ctrl-C surfaced.

    A SIGINT that lands while a C extension initializes during a lazy import (scipy.optimize, …)
    comes out as ``ImportError: initialization failed`` with the KeyboardInterrupt as its context;
    any exception raised while a Ctrl-C is pending is likewise a consequence of the interrupt. The
    job must treat it as the interrupt (save, say how to resume, exit 130), not as a failure."""
    if isinstance(exc, KeyboardInterrupt):
        return False
    if _ACTIVE is not None and _ACTIVE.count:
        return True
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def _hard_exit(message: str) -> None:
    """Say ``message`` on stderr and leave now (no interpreter shutdown that could wait on threads)."""
    try:
        sys.stderr.write(f"\n{message}\n")
        sys.stderr.flush()
        sys.stdout.flush()
    finally:
        os._exit(EXIT_INTERRUPTED)


class Interrupts:
    """SIGINT handling for one job (use as a context manager in the main thread)."""

    def __init__(self, second_message: str = "second Ctrl-C: stopping now", bound_exit: bool = False) -> None:
        """``bound_exit``: after a Ctrl-C, give the interpreter :data:`EXIT_SECONDS` to shut down, then
        exit with 130 (for a command line program; never for a library caller such as a test runner)."""
        self.second_message = second_message
        self.bound_exit = bound_exit
        self.count = 0  # SIGINTs received
        self.interrupted_at = 0.0  # time.monotonic() of the first
        self._depth = 0  # enclosing sections of any kind
        self._data = 0  # enclosing critical() (data) sections
        self._pending = False
        self._cancel: Callable[[], Any] | None = None
        self._previous: Any = None
        self._previous_unraisable: Callable[[Any], None] = sys.unraisablehook
        self._installed = False

    # ------------------------------------------------------------------ installation
    def __enter__(self) -> Interrupts:
        global _ACTIVE
        if threading.current_thread() is not threading.main_thread() or _ACTIVE is not None:
            return self
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            return self  # Ctrl-C is ignored in this process (nohup): keep it so
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # pragma: no cover - embedded interpreters
            return self
        self._installed = True
        self._previous_unraisable = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        _ACTIVE = self
        return self

    def _unraisable(self, unraisable: Any) -> None:
        """A Ctrl-C that landed inside a finalizer or weakref callback cannot propagate; Python would print
        it as "Exception ignored … Traceback". It is not lost (``count`` is set and :meth:`check` raises
        it at the next safe point), so it is not printed; any other unraisable goes to the previous hook."""
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and self.count:
            return
        self._previous_unraisable(unraisable)

    def __exit__(self, *exc: object) -> None:
        global _ACTIVE
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            sys.unraisablehook = self._previous_unraisable
            self._installed = False
            _ACTIVE = None
            if self.count and self.bound_exit:
                _bound_interpreter_exit(EXIT_SECONDS)


    # ------------------------------------------------------------------ state
    @property
    def interrupted(self) -> bool:
        return self.count > 0

    def _handler(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            self.interrupted_at = time.monotonic()
        if self.count > 1 and not self._data:
            _hard_exit(self.second_message)  # nothing half-written: leave now
        if not self._depth:
            raise KeyboardInterrupt
        self._pending = True  # raised when the section ends (a second Ctrl-C: exit after a data write)
        if self._cancel is not None and self.count == 1:
            # never from this handler: it runs in the main thread, maybe inside the library's locks
            threading.Thread(target=self._cancel, daemon=True, name="neqforce-cancel").start()

    def check(self) -> None:
        """A safe point (between steps): raise KeyboardInterrupt if a Ctrl-C was received, even if its
        exception was swallowed somewhere or is still deferred by an enclosing :meth:`protected`."""
        if self.count:
            self._pending = False
            raise KeyboardInterrupt

    def _leave(self, replace: bool) -> None:
        """End of a section: a deferred Ctrl-C is raised once no section encloses it (or at once, when
        ``replace``: the section's own result is void)."""
        if self._pending and self.count > 1 and not self._data:
            _hard_exit(self.second_message)
        if self._pending and (replace or not self._depth):
            self._pending = False
            raise KeyboardInterrupt

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A data write a Ctrl-C must not cut in half (recording a step, a checkpoint): a Ctrl-C
        received inside is raised at its end, a second one exits right after it."""
        self._depth += 1
        self._data += 1
        try:
            yield
        finally:
            self._data -= 1
            self._depth -= 1
        self._leave(replace=False)

    @contextmanager
    def protected(self) -> Iterator[None]:
        """Code where an asynchronous KeyboardInterrupt could leave a lock held (progress bars, HDF5,
        gRPC teardown): Ctrl-C is raised when the section ends or at the next :meth:`check`; a second
        Ctrl-C exits at once."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            self._leave(replace=not self._depth)

    @contextmanager
    def interruptible(self, cancel: Callable[[], Any]) -> Iterator[None]:
        """A blocking call into a library that takes locks (gRPC): Ctrl-C must not raise inside it.

        An exception raised by the signal handler between a lock's acquire and its release leaves the
        lock held for ever: the next gRPC operation on the call (cancel, Channel.close) then waits
        for ever — the Ctrl-C hang of ``neqforce simulate``. Here a Ctrl-C instead runs ``cancel``
        (e.g. cancel the RPC) in a helper thread, the call returns or fails soon after, and
        KeyboardInterrupt is raised when the section ends, in place of whatever it raised.
        """
        self._depth += 1
        outer, self._cancel = self._cancel, cancel
        try:
            yield
        finally:
            self._cancel = outer
            self._depth -= 1
            self._leave(replace=True)

    @contextmanager
    def deadline(self, seconds: float, message: str) -> Iterator[None]:
        """Exit the process with 130 (printing ``message``) if the block is still running ``seconds``
        after a Ctrl-C (counted from the later of the Ctrl-C and the start of the block)."""
        done = threading.Event()
        started = time.monotonic()

        def watch() -> None:
            while not done.wait(0.05):
                if self.count and time.monotonic() - max(started, self.interrupted_at) > seconds:
                    _hard_exit(message)

        threading.Thread(target=watch, daemon=True, name="neqforce-shutdown-deadline").start()
        try:
            yield
        finally:
            done.set()


#: Seconds the interpreter may spend shutting down after an interrupted job (joining the threads of
#: an embedded server that is still finishing a long NEGF call, …) before the process exits with 130.
EXIT_SECONDS = 5.0


def _bound_interpreter_exit(seconds: float) -> None:
    """Once the interpreter starts shutting down, give it ``seconds`` to finish, then exit with 130.

    Registered with threading's pre-join hook, so it runs before the interpreter waits for worker
    threads (``concurrent.futures`` joins its pools there); only armed after a real Ctrl-C.
    """
    def arm() -> None:
        def watch() -> None:
            time.sleep(seconds)
            os._exit(EXIT_INTERRUPTED)

        threading.Thread(target=watch, daemon=True, name="neqforce-exit-deadline").start()

    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        try:
            register(arm)
        except RuntimeError:  # already shutting down
            arm()


@contextmanager
def interruptible(cancel: Callable[[], Any]) -> Iterator[None]:
    """:meth:`Interrupts.interruptible` of the installed handler; nothing when none is installed."""
    current = active()
    if current is None:
        yield
        return
    with current.interruptible(cancel):
        yield


@contextmanager
def guarded() -> Iterator[Interrupts]:
    """The installed :class:`Interrupts` (shared by nested users), or a new one for this block."""
    current = active()
    if current is not None:
        yield current
        return
    with Interrupts() as new:
        yield new
