"""A small pickle-free row encoding for LMDB datasets.

Layout (little-endian): MAGIC, then one value. A value is a 1-byte tag and its body:
  b"A" array: u8 len + numpy dtype.str (ascii), u8 ndim, ndim x u64 shape, raw C-order bytes
  b"S" str: u64 len + utf-8 bytes          b"B" bytes: u64 len + bytes
  b"I" int: i64                             b"F" float: f64
  b"T" tuple: u32 count + count values
Python lists (and tensors) are stored as arrays, since rows are token sequences.
Decoding never executes code: only these tags and plain numeric dtypes are accepted.
"""

from __future__ import annotations

import struct
from typing import Any, Tuple

import numpy as np

MAGIC = b"\x93CVROW1\n"
_ALLOWED_KINDS = "biuf"  # bool, signed, unsigned, float


class RowFormatError(ValueError):
    """Bytes that claim to be a row but do not decode as one."""


def is_encoded_row(data: bytes) -> bool:
    return bytes(data[: len(MAGIC)]) == MAGIC


def encode_row(row: Any) -> bytes:
    """Row (array, list of ids, str, or a tuple of those) -> bytes."""
    out = bytearray(MAGIC)
    _encode(row, out)
    return bytes(out)


def _encode(value: Any, out: bytearray) -> None:
    if isinstance(value, str):
        data = value.encode("utf-8")
        out += b"S" + struct.pack("<Q", len(data)) + data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        out += b"B" + struct.pack("<Q", len(data)) + data
    elif isinstance(value, tuple):
        out += b"T" + struct.pack("<I", len(value))
        for item in value:
            _encode(item, out)
    elif isinstance(value, (bool, np.bool_)):
        _encode_array(np.asarray(value), out)
    elif isinstance(value, (int, np.integer)):
        out += b"I" + struct.pack("<q", int(value))
    elif isinstance(value, (float, np.floating)):
        out += b"F" + struct.pack("<d", float(value))
    else:
        if type(value).__module__.startswith("torch"):
            value = value.detach().cpu().numpy()
        elif isinstance(value, list):
            value = np.asarray(value, dtype=np.int64 if _all_ints(value) else None)
        if not isinstance(value, np.ndarray):
            raise TypeError(
                f"cannot store a {type(value).__name__} in a dataset row "
                "(use arrays, lists of ids, str, bytes, numbers or tuples)"
            )
        _encode_array(value, out)


def _all_ints(values: list) -> bool:
    return all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)


def _encode_array(arr: np.ndarray, out: bytearray) -> None:
    if arr.dtype.kind not in _ALLOWED_KINDS:
        raise TypeError(f"cannot store an array of dtype {arr.dtype} in a dataset row (numeric dtypes only)")
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    arr = np.ascontiguousarray(arr, dtype=dtype)
    name = arr.dtype.str.encode("ascii")
    out += b"A" + struct.pack("<B", len(name)) + name + struct.pack("<B", arr.ndim)
    out += struct.pack(f"<{arr.ndim}Q", *arr.shape) + arr.tobytes()


def decode_row(data: bytes) -> Any:
    """Bytes from encode_row -> the row (arrays come back as numpy arrays)."""
    view = memoryview(data)
    if not is_encoded_row(view):
        raise RowFormatError("not an encoded row (magic bytes missing)")
    try:
        value, pos = _decode(view, len(MAGIC))
    except (struct.error, ValueError, TypeError) as exc:
        raise RowFormatError(f"corrupt row: {exc}") from None
    if pos != len(view):
        raise RowFormatError(f"corrupt row: {len(view) - pos} trailing bytes")
    return value


def _decode(view: memoryview, pos: int) -> Tuple[Any, int]:
    tag = bytes(view[pos : pos + 1])
    pos += 1
    if tag in (b"S", b"B"):
        (n,) = struct.unpack_from("<Q", view, pos)
        pos += 8
        if pos + n > len(view):
            raise ValueError("string runs past the end")
        data = bytes(view[pos : pos + n])
        return (data.decode("utf-8") if tag == b"S" else data), pos + n
    if tag == b"I":
        return struct.unpack_from("<q", view, pos)[0], pos + 8
    if tag == b"F":
        return struct.unpack_from("<d", view, pos)[0], pos + 8
    if tag == b"T":
        (n,) = struct.unpack_from("<I", view, pos)
        pos += 4
        items = []
        for _ in range(n):
            item, pos = _decode(view, pos)
            items.append(item)
        return tuple(items), pos
    if tag == b"A":
        (n,) = struct.unpack_from("<B", view, pos)
        dtype = np.dtype(bytes(view[pos + 1 : pos + 1 + n]).decode("ascii"))
        if dtype.kind not in _ALLOWED_KINDS:
            raise ValueError(f"dtype {dtype} is not allowed")
        pos += 1 + n
        (ndim,) = struct.unpack_from("<B", view, pos)
        shape = struct.unpack_from(f"<{ndim}Q", view, pos + 1)
        pos += 1 + 8 * ndim
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if pos + nbytes > len(view):
            raise ValueError("array data runs past the end")
        arr = np.frombuffer(view[pos : pos + nbytes], dtype=dtype).reshape(shape).copy()
        return arr, pos + nbytes
    raise ValueError(f"unknown tag {tag!r}")
