"""Fast reading of uncompressed ``np.savez`` files as read-only memory maps.

``np.load`` copies each member of an ``.npz`` through the zip module into fresh memory,
which takes most of a second for the few hundred MiB of a large audit's scores. An
uncompressed member is a plain ``.npy`` inside the file, so it can be mapped instead.
"""

from __future__ import annotations

import math
import mmap
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["read_stored_npz"]

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local file header


def read_stored_npz(path: Path) -> dict[str, NDArray[Any]] | None:
    """The arrays of an uncompressed ``np.savez`` file, as read-only views of the file.

    ``np.load`` copies each member through the zip module in small blocks into fresh
    memory, which takes most of a second for a few hundred MiB; here the file is mapped
    (read-only, so a file replaced on disk later does not change these arrays' meaning
    for this audit unless it is modified in place) and each member's CRC-32 is still
    checked. Anything else (compressed or encrypted members, other .npy versions,
    object arrays, any inconsistency) returns None and is left to ``np.load``, which
    reads it or reports the problem.
    """
    arrays: dict[str, NDArray[Any]] = {}
    try:
        with zipfile.ZipFile(path) as archive, path.open("rb") as handle:
            members = archive.infolist()
            names = [m.filename for m in members]
            if len(set(names)) != len(names):
                return None
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            view = memoryview(mapping)
            for member in members:
                if (
                    not member.filename.endswith(".npy")
                    or member.compress_type != zipfile.ZIP_STORED
                    or member.flag_bits & 0x1
                ):
                    return None
                handle.seek(member.header_offset)
                magic, *_, name_length, extra_length = _LOCAL_HEADER.unpack(
                    handle.read(_LOCAL_HEADER.size)
                )
                encoding = "utf-8" if member.flag_bits & 0x800 else "cp437"
                if (
                    magic != b"PK\x03\x04"
                    or handle.read(name_length).decode(encoding) != member.orig_filename
                ):
                    return None
                start = member.header_offset + _LOCAL_HEADER.size + name_length + extra_length
                handle.seek(start)
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
                else:
                    return None
                data_start = handle.tell()
                count = math.prod(shape)
                data_end = data_start + count * dtype.itemsize
                if (
                    dtype.hasobject
                    or dtype.itemsize == 0
                    or data_end - start != member.file_size
                    or data_end > len(mapping)
                ):
                    return None
                if zlib.crc32(view[start:data_end]) != member.CRC:
                    return None
                if count and data_start % dtype.alignment == 0:
                    flat = np.frombuffer(mapping, dtype=dtype, count=count, offset=data_start)
                else:  # empty, or misaligned for its dtype: a copy
                    flat = np.empty(count, dtype)
                    flat.view(np.uint8)[:] = np.frombuffer(view[data_start:data_end], np.uint8)
                    flat.flags.writeable = False
                # A Fortran-ordered array is stored as its transpose in C order.
                array = flat.reshape(shape[::-1]).T if fortran_order else flat.reshape(shape)
                arrays[member.filename[: -len(".npy")]] = array
    except (OSError, EOFError, ValueError, TypeError, struct.error, zipfile.BadZipFile):
        return None
    return arrays
