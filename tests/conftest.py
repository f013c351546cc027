"""Suite-wide setup.

A test run started in the background of a non-interactive shell (``cmd &``, as some CI harnesses do)
inherits SIGINT *ignored* (POSIX), and so would every process the tests start: ``neqforce`` then rightly
leaves Ctrl-C ignored (``client/interrupt.py``), and the tests that send SIGINT to a real run would see it
finish instead. They test Ctrl-C handling, so the suite restores Python's default handler first.
"""

from __future__ import annotations

import signal

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
