"""NEGF worker process: ``python -m neqforce.server.backends.negf_worker``.

Reads pickled ``(q, params)`` jobs from stdin and writes ``("ok", (force, density))`` or
``("error", message)`` to stdout, one after the other, until stdin closes. Started by
:class:`neqforce.server.backends.negf.NegfBackend` in its own process group; only that parent writes to it
and only that parent stops it (SIGKILL), so it ignores SIGINT: a terminal's Ctrl-C reaches the server,
which shuts down, never a worker in the middle of a read.
"""

from __future__ import annotations

import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)  # first thing: before the slower imports below

import pickle  # noqa: E402
import sys  # noqa: E402


def main() -> None:
    channel_in, channel_out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the result channel
    from neqforce.server.backends.negf import negf_batch

    while True:
        try:
            q, params = pickle.load(channel_in)
        except (EOFError, OSError, pickle.UnpicklingError):  # parent gone or closed the pipe
            return
        try:
            reply = ("ok", negf_batch(q, params))
        except Exception as exc:  # report solver failures; the worker stays up
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            pickle.dump(reply, channel_out, protocol=pickle.HIGHEST_PROTOCOL)
            channel_out.flush()
        except OSError:  # parent gone while we computed
            return


if __name__ == "__main__":
    main()
