"""Bounded echo of client-supplied strings (model names, parameter names, request ids, methods) in
status messages and logs: a client must not be able to inflate a reply or a log line."""

from __future__ import annotations

from collections.abc import Iterable

#: Characters of one client string echoed back.
MAX_ECHO = 80
#: Client strings listed in one message (e.g. unknown parameter names).
MAX_ITEMS = 8
#: Characters of a whole status message (gRPC trailing metadata is limited to 8 KiB by default).
MAX_MESSAGE = 2000


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """``text`` if it has at most ``limit`` characters, else its head and how many characters were cut."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} characters)"


def clip_names(names: Iterable[str], limit: int = MAX_ITEMS) -> str:
    """A list of client strings like ``['a', 'b']``: each clipped, at most ``limit`` shown."""
    names = list(names)
    shown = ", ".join(repr(clip(n)) for n in names[:limit])
    more = f", ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"
