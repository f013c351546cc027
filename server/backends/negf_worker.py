"""NEGF worker process: ``python -m neqforce.server.backends.negf_worker``.

Reads pickled ``(q, params)`` jobs from stdin and writes ``("ok", (force, density))`` or
``("error", message)`` to stdout, one after the other, until stdin closes. Started by
:class:`neqforce.server.backends.negf.NegfBackend`; only that parent writes to it.
"""

from __future__ import annotations

import pickle
import sys


def main() -> None:
    channel_in, channel_out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stray prints must not corrupt the result channel
    from neqforce.server.backends.negf import negf_batch

    while True:
        try:
            q, params = pickle.load(channel_in)
        except (EOFError, pickle.UnpicklingError):  # parent gone or closed the pipe
            return
        try:
            reply = ("ok", negf_batch(q, params))
        except Exception as exc:  # report solver failures; the worker stays up
            reply = ("error", f"{type(exc).__name__}: {exc}")
        pickle.dump(reply, channel_out, protocol=pickle.HIGHEST_PROTOCOL)
        channel_out.flush()


if __name__ == "__main__":
    main()
