"""openpi's wire format: msgpack with numpy arrays as ``{b"__ndarray__": True, b"data", b"dtype", b"shape"}``.

    frame = packb({"actions": np.zeros((10, 7), np.float32)})
    message = unpackb(frame)          # arrays back as (read-only) numpy arrays

Written here from the format ``openpi_client.msgpack_numpy`` speaks (numpy scalars travel as
``{b"__npgeneric__": True, b"data", b"dtype"}``). Only plain numeric dtypes are accepted, never
object arrays; a malformed array raises ``WireError`` naming where in the message it sits.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


class WireError(ValueError):
    """A frame that is not openpi's msgpack, or an array in it that is malformed; names the field."""


def _pack_array(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in NUMERIC_KINDS:
        raise TypeError(f"unsupported dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def packb(message: Any) -> bytes:
    return msgpack.packb(message, default=_pack_array)


def _dtype(value: Any, field: str) -> np.dtype:
    try:
        dtype = np.dtype(value.decode() if isinstance(value, bytes) else value)
    except (TypeError, ValueError):
        raise WireError(f"{field}: dtype {value!r} is not a numpy dtype") from None
    if dtype.kind not in NUMERIC_KINDS:
        raise WireError(f"{field}: dtype {dtype} is not numeric")
    return dtype


def _array(value: dict, field: str) -> np.ndarray | np.generic:
    dtype = _dtype(value.get(b"dtype"), field)
    data = value.get(b"data")
    if b"__npgeneric__" in value:
        return dtype.type(data)
    shape = value.get(b"shape")
    if not isinstance(data, bytes) or not isinstance(shape, list) or not all(
            isinstance(n, int) and n >= 0 for n in shape):
        raise WireError(f"{field}: expected an ndarray with bytes data and a shape of sizes >= 0")
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise WireError(f"{field}: {len(data)} bytes of data for shape {tuple(shape)} {dtype} ({expected} expected)")
    return np.frombuffer(data, dtype).reshape(shape)


def _decode(value: Any, field: str) -> Any:
    if isinstance(value, dict):
        if b"__ndarray__" in value or b"__npgeneric__" in value:
            return _array(value, field)
        return {key: _decode(item, f"{field}.{key}" if field else str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_decode(item, f"{field}[{i}]") for i, item in enumerate(value)]
    return value


def unpackb(frame: bytes) -> Any:
    """One msgpack frame -> Python values with numpy arrays; ``WireError`` naming the field."""
    try:
        message = msgpack.unpackb(frame, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as err:
        raise WireError(f"frame: expected one msgpack message ({err})") from None
    return _decode(message, "")
