"""Raw little-endian tensors (``neqforce.v1.Tensor``) <-> numpy arrays, with request validation."""

from __future__ import annotations

import math

import numpy as np

from neqforce.v1 import force_service_pb2 as pb

from .errors import exhausted, invalid

#: Wire dtype -> numpy dtype (little-endian).
NUMPY_DTYPES: dict[int, np.dtype] = {pb.DATA_TYPE_FP32: np.dtype("<f4"), pb.DATA_TYPE_FP64: np.dtype("<f8")}


def wire_dtype(dtype: np.dtype) -> int:
    """The DataType enum of a numpy float dtype (float32 or float64)."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return pb.DATA_TYPE_FP32
    if dtype == np.float64:
        return pb.DATA_TYPE_FP64
    raise ValueError(f"unsupported dtype {dtype} (float32 or float64)")


def check_shape(shape: list[int] | tuple[int, ...], max_sites: int) -> tuple[int, int, int]:
    """(batch, lx, ly) of a q shape [lx, ly] or [batch, lx, ly]; INVALID_ARGUMENT / RESOURCE_EXHAUSTED.

    The site limit is checked before any byte is decoded.
    """
    dims = [int(d) for d in shape]
    if len(dims) not in (2, 3):
        raise invalid(f"q must have shape [lx, ly] or [batch, lx, ly], got {dims}")
    if any(d <= 0 for d in dims):
        raise invalid(f"q dimensions must be > 0, got {dims}")
    batch, lx, ly = ([1] + dims) if len(dims) == 2 else dims
    n_sites = batch * lx * ly
    if n_sites > max_sites:
        raise exhausted(f"request has {n_sites} sites (batch {batch} x {lx} x {ly}), "
                        f"over this server's max_sites = {max_sites}")
    return batch, lx, ly


def decode_q(tensor: pb.Tensor, max_sites: int,
             max_abs_q: float = float("inf")) -> tuple[np.ndarray, tuple[int, ...]]:
    """Validated q as a read-only (batch, lx, ly) view of the raw bytes, and the shape as sent.

    Raises RequestError: INVALID_ARGUMENT for dtype / shape / byte-count mismatch, NaN/Inf, or a value
    with |q| > ``max_abs_q``; RESOURCE_EXHAUSTED above ``max_sites``.
    """
    if tensor.dtype not in NUMPY_DTYPES:
        names = pb.DataType.keys()
        name = names[tensor.dtype] if 0 <= tensor.dtype < len(names) else str(tensor.dtype)
        raise invalid(f"q dtype must be DATA_TYPE_FP32 or DATA_TYPE_FP64, got {name}")
    batch, lx, ly = check_shape(tensor.shape, max_sites)
    dtype = NUMPY_DTYPES[tensor.dtype]
    expected = batch * lx * ly * dtype.itemsize
    raw = tensor.raw_contents  # each attribute access copies the bytes: read once
    if len(raw) != expected:
        raise invalid(f"q raw_contents has {len(raw)} bytes, shape {list(tensor.shape)} "
                      f"of {dtype.name} needs {expected}")
    q = np.frombuffer(raw, dtype=dtype).reshape(batch, lx, ly)
    # NaN makes the comparison False, so one test covers both checks
    if not float(np.abs(q).max()) <= max_abs_q:
        if not np.isfinite(q).all():
            bad = int(np.count_nonzero(~np.isfinite(q)))
            raise invalid(f"q contains {bad} non-finite value(s) (NaN or Inf)")
        size = np.abs(q)
        raise invalid(f"q has {int(np.count_nonzero(size > max_abs_q))} value(s) with |q| > {max_abs_q:g} "
                      f"(largest {float(size.max()):.3g}): outside this server's physical range "
                      "(max_abs_q, see docs/server.md)")
    return q, tuple(int(d) for d in tensor.shape)


def count_non_finite(array: np.ndarray) -> int:
    """Number of NaN/Inf entries. The common (finite) case costs one BLAS dot product: the sum of squares
    is finite unless an entry is NaN/Inf (or so large that it overflows: then the exact count decides)."""
    if math.isfinite(np.vdot(array, array)):
        return 0
    return int(np.count_nonzero(~np.isfinite(array)))


def encode(array: np.ndarray, shape: tuple[int, ...]) -> pb.Tensor:
    """A Tensor of ``array`` (float32 or float64) reshaped to ``shape``, as little-endian bytes."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    raw = array.astype(dtype, copy=False).tobytes()
    return pb.Tensor(shape=shape, dtype=wire_dtype(dtype), raw_contents=raw)
