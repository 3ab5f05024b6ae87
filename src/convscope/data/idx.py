"""IDX files, the format of the MNIST family (MNIST, Fashion-MNIST, KMNIST, EMNIST), gzipped or not.

Layout: two zero bytes, a type code, the number of dimensions D, then D big-endian uint32 sizes and the data.
The reader checks the magic number, the type code and that the data has exactly the size the header promises.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError

__all__ = ["read_idx", "write_idx", "IDX_TYPES"]

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DatasetError(f"IDX file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise DatasetError(f"IDX file {str(path)!r} is empty (0 bytes)")
    with path.open("rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    try:
        return gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    except (EOFError, OSError, zlib.error) as error:
        raise DatasetError(f"IDX file {str(path)!r} is a corrupt or truncated gzip file ({error})") from None


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (`.gz` or plain, detected from its content) -> a numpy array with the file's shape.

    uint8 data stays uint8 (images: (N, H, W), labels: (N,)); other types become native-endian.
    Raises `DatasetError` naming the file for a bad magic number, unknown type code, or a size mismatch.
    """
    path = Path(path)
    raw = _read_bytes(path)
    name = str(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"{name!r} is not an IDX file (bad magic number {raw[:4].hex() or 'none'})")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise DatasetError(f"IDX file {name!r} has unknown data type code 0x{code:02x}")
    if ndim == 0:
        raise DatasetError(f"IDX file {name!r} declares zero dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"IDX file {name!r} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have < expected:
        raise DatasetError(f"IDX file {name!r} is truncated: header promises shape {shape} ({expected} bytes of "
                           f"data), the file holds {have}")
    if have > expected:
        raise DatasetError(f"IDX file {name!r} has {have - expected} bytes more than its header {shape} promises")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def write_idx(path: str | Path, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write `array` as an IDX file (gzipped when `compress`, default: when the name ends in `.gz`)."""
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("=") if v.itemsize > 1 else v: k for k, v in IDX_TYPES.items()}
    dtype = np.dtype(array.dtype)
    if dtype not in codes:
        raise ValueError(f"IDX cannot hold dtype {dtype}")
    code = codes[dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path
