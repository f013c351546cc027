"""The parameter grid of ``neqforce sweep``: ranges ``a:b:step`` and lists ``a,b,c`` of any
:class:`~neqforce.physics.HolsteinParams` field (lattice size included), and the points they span.

    grid = parse_grid({"voltage": "2.0:4.0:0.25", "lx": "12,16"})
    points = grid_points(grid, HolsteinParams())     # the Cartesian product, voltage varying fastest

A range includes both ends when ``b - a`` is a whole number of steps (up to 1e-9 of a step); values
are rounded to 12 significant digits so that 2.0 + 3·0.25 prints as 2.75. Every mistake (empty
range, reversed range, zero or negative step, unknown name, a value HolsteinParams rejects) is a
ValueError with a one-line message.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

from neqforce.physics import HolsteinParams

#: Fields that take integers (lattice size).
INTEGER_FIELDS = ("lx", "ly")
#: Largest number of points one sweep may span (a typo like 0:100:1e-6 fails at once).
MAX_POINTS = 10_000


def param_names() -> list[str]:
    """Every HolsteinParams field, in declaration order."""
    return [f.name for f in fields(HolsteinParams)]


def _number(text: str, name: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--{_flag(name)} {spec!r}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"--{_flag(name)} {spec!r}: {text.strip()!r} is not a finite number")
    return value


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _clean(value: float, name: str, spec: str) -> float | int:
    if name in INTEGER_FIELDS:
        if value != int(value):
            raise ValueError(f"--{_flag(name)} {spec!r}: {value:g} is not an integer")
        return int(value)
    return float(f"{value:.12g}")


def parse_values(name: str, spec: str) -> list[float | int]:
    """The values of one field: ``a:b:step`` (inclusive range), ``a,b,c`` (list) or ``a`` (one value)."""
    if name not in param_names():
        raise ValueError(f"unknown parameter {name!r}; known: {', '.join(param_names())}")
    text = str(spec).strip()
    if not text or not text.strip(",: "):
        raise ValueError(f"--{_flag(name)}: empty range {spec!r}; give a:b:step, a list a,b,c or a value")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ValueError(f"--{_flag(name)} {spec!r}: a range is start:stop:step, e.g. 2.0:4.0:0.25")
        start, stop, step = (_number(p, name, spec) for p in parts)
        if step == 0:
            raise ValueError(f"--{_flag(name)} {spec!r}: step of zero (the range would never end)")
        if step < 0:
            raise ValueError(f"--{_flag(name)} {spec!r}: negative step; write the range upwards, "
                             f"{stop:g}:{start:g}:{-step:g}")
        if stop < start:
            raise ValueError(f"--{_flag(name)} {spec!r}: reversed range (stop {stop:g} < start {start:g}); "
                             f"write {stop:g}:{start:g}:{step:g}")
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > MAX_POINTS:
            raise ValueError(f"--{_flag(name)} {spec!r}: {count} values, over the limit of {MAX_POINTS}")
        values = [_clean(start + i * step, name, spec) for i in range(count)]
    else:
        items = [p.strip() for p in text.split(",")]
        if not all(items):
            raise ValueError(f"--{_flag(name)} {spec!r}: empty item in the list")
        values = [_clean(_number(p, name, spec), name, spec) for p in items]
    if len(set(values)) != len(values):
        raise ValueError(f"--{_flag(name)} {spec!r}: a value appears twice")
    return values


def parse_grid(specs: Mapping[str, str | None]) -> dict[str, list[float | int]]:
    """``{field: spec}`` (None entries ignored) -> ``{field: values}``, in HolsteinParams field order."""
    given = {k: v for k, v in specs.items() if v is not None}
    for name in given:
        if name not in param_names():
            raise ValueError(f"unknown parameter {name!r}; known: {', '.join(param_names())}")
    grid = {name: parse_values(name, given[name]) for name in param_names() if name in given}
    total = math.prod(len(v) for v in grid.values())
    if total > MAX_POINTS:
        raise ValueError(f"the grid spans {total} points, over the limit of {MAX_POINTS}")
    return grid


@dataclass(frozen=True)
class GridPoint:
    """One parameter point: its full parameters and the swept values that name it."""

    params: HolsteinParams
    swept: tuple[tuple[str, float | int], ...]

    @property
    def name(self) -> str:
        """Folder name, e.g. ``voltage=2.5`` or ``lx=12_voltage=3`` (the base point: ``base``)."""
        if not self.swept:
            return "base"
        return "_".join(f"{k}={v:.10g}" for k, v in self.swept)

    @property
    def label(self) -> str:
        return ", ".join(f"{k} = {v:g}" for k, v in self.swept) or "base parameters"


def grid_points(grid: Mapping[str, Sequence[float | int]],
                base: HolsteinParams | None = None) -> list[GridPoint]:
    """The Cartesian product of the grid over ``base`` (SPEC defaults); the last swept field varies
    fastest. A field given one value changes the base instead of naming the points. Values
    HolsteinParams rejects (e.g. a negative temperature) are a ValueError."""
    base = base or HolsteinParams()
    fixed = {n: v[0] for n, v in grid.items() if len(v) == 1}  # one value: a base parameter, not swept
    try:
        base = base.replace(**fixed)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid parameters: {exc}") from None
    names = [n for n, v in grid.items() if len(v) > 1]
    points = []
    for combo in itertools.product(*(grid[n] for n in names)):
        swept = tuple(zip(names, combo, strict=True))
        try:
            params = base.replace(**dict(swept))
        except (TypeError, ValueError) as exc:
            where = ", ".join(f"{k}={v:g}" for k, v in swept)
            raise ValueError(f"invalid parameters at {where}: {exc}") from None
        points.append(GridPoint(params=params, swept=swept))
    return points
