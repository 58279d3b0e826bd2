"""Named numpy arrays in one ``.npz`` file that a reader maps instead of reading.

A catalogue of a million items ships hundreds of MB of arrays (related-items lists, embeddings,
catalogue columns). ``np.load`` of an ``.npz`` copies every member into memory, so start-up time
and resident memory grow with the catalogue even where a request touches a few rows. Here each
member is stored uncompressed (a plain zip, still readable by ``np.load``) with its data at a
64-byte aligned offset, and :func:`load_arrays` maps it: opening costs a few reads of headers, and
only the pages a request touches become resident (file pages, shared with the page cache).

Older files written by ``np.savez`` (uncompressed, unaligned) map too; a compressed member is read.
"""

from __future__ import annotations

import io
import mmap
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

ALIGN = 64
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # a zip local file header, before name and extra
_EXTRA_PAD = 0xCAFE  # an unregistered zip extra-field id whose body is padding


def write_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz`` whose members' data are aligned."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, value in arrays.items():
            array = np.ascontiguousarray(value)
            if array.dtype.hasobject:
                raise ValueError(f"{name}: object arrays cannot be stored")
            header = _npy_header(array)
            member = f"{name}.npy"
            info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            # The member's bytes start after the local header (30 bytes, plus 20 of zip64 sizes
            # for a large member), its name and its extra field; pad the extra so the array data,
            # after the npy header, falls on an aligned offset of the file.
            size = len(header) + array.nbytes
            zip64 = 20 if size >= 0xFFFFFFFF else 0
            start = archive.fp.tell() + _LOCAL_HEADER.size + len(member.encode()) + zip64  # type: ignore[union-attr]
            pad = -(start + 4 + len(header)) % ALIGN
            info.extra = struct.pack("<HH", _EXTRA_PAD, pad) + b"\0" * pad
            with archive.open(info, "w", force_zip64=bool(zip64)) as out:
                out.write(header)
                out.write(array.reshape(-1).view(np.uint8).data if array.size else b"")


def _npy_header(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, np.lib.format.header_data_from_array_1_0(array))
    return buffer.getvalue()


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every member of the ``.npz`` at ``path``, by name: read-only arrays over a map of the
    file's pages where the member is stored uncompressed, arrays in memory where compressed."""
    out: dict[str, np.ndarray] = {}
    with path.open("rb") as handle, zipfile.ZipFile(handle) as archive:
        pages = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else None
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            name = info.filename[: -len(".npy")]
            if info.compress_type != zipfile.ZIP_STORED or pages is None:
                with archive.open(info) as member:
                    out[name] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            handle.seek(info.header_offset)
            fields = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
            if fields[0] != b"PK\x03\x04":
                raise ValueError(f"{path}: {info.filename}: not a zip member header")
            data_start = info.header_offset + _LOCAL_HEADER.size + fields[9] + fields[10]
            handle.seek(data_start)
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(handle)
            if dtype.hasobject:
                raise ValueError(f"{path}: {info.filename} holds Python objects")
            offset = handle.tell()
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset - data_start + nbytes != info.file_size:
                raise ValueError(f"{path}: {info.filename} is not as long as its header says")
            order: Literal["C", "F"] = "F" if fortran else "C"
            out[name] = (
                np.ndarray(shape, dtype=dtype, buffer=pages, offset=offset, order=order)
                if nbytes
                else np.zeros(shape, dtype=dtype, order=order)
            )
    return out
