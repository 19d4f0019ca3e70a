"""Cheap checks that a model file can be loaded, before any step runs.

``curation run`` checks every model file the steps declare (``Operator.weight_files``): that it
exists, is not empty and that its container is whole, by reading only what the format says about
itself. A 0-byte, truncated or random-bytes file is refused with one line naming it, instead of
failing every video of its step later with the loader's own message ("Unable to open zip archive",
"Unable to get file size, errno=0").

============================  =========================================================  =======
format (by name)              what is checked                                             cost
============================  =========================================================  =======
zip: .task, .pt, .pth,        the central directory (at the end of the file: a truncated  a read
.model, .ckpt, .zip, .npz     file has none); ``deep``: every member's CRC                of the
                                                                                          index
.pt/.pth/.model (legacy)      a pickle (protocol byte 0x80) instead of a zip is accepted  1 byte
.onnx                         the protobuf's top-level fields, walked to the exact end    a few
                              of the file, and a graph among them                         reads
.safetensors                  the JSON header, and that its tensors end at the file end   header
.tflite                       the FlatBuffer identifier ``TFL3``, and that every weight   a read
                              buffer of the model lies inside the file                    a buffer
.h5, .hdf5                    the signature, and the superblock's end-of-file address     96 bytes
.json                         it parses                                                   file
anything else                 it exists and is not empty                                  stat
============================  =========================================================  =======

``deep`` (used to name the culprit after a step's ``setup()`` failed) also reads every zip member.
"""
from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

ZIP_SUFFIXES = {".task", ".pt", ".pth", ".model", ".ckpt", ".zip", ".npz"}
TORCH_SUFFIXES = {".pt", ".pth", ".model", ".ckpt"}   # zip (torch.save) or a legacy pickle
MAX_SAFETENSORS_HEADER = 100 << 20


def problem(path: str | Path, deep: bool = False) -> str | None:
    """What is wrong with the model file at ``path`` (one line), or None when it looks loadable."""
    p = Path(path)
    if not p.exists():
        return "missing"
    if not p.is_file():
        return "not a file"
    size = p.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    suffix = p.suffix.lower()
    try:
        with open(p, "rb") as f:
            head = f.read(16)
            if suffix in TORCH_SUFFIXES and head[:1] == b"\x80":
                return None                      # a legacy (pre-zip) torch pickle
            if suffix in ZIP_SUFFIXES:
                return _zip(p, deep)
            if suffix == ".onnx":
                return _onnx(f, size)
            if suffix == ".safetensors":
                return _safetensors(f, size)
            if suffix == ".tflite":
                return _tflite(f, head, size)
            if suffix in (".h5", ".hdf5"):
                return _hdf5(f, head, size)
            if suffix == ".json":
                f.seek(0)
                json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return f"unreadable: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    return None


def _zip(p: Path, deep: bool) -> str | None:
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            if not names:
                return "an empty zip archive"
            if deep:
                bad = z.testzip()
                if bad is not None:
                    return f"corrupt zip archive (member {bad!r} fails its CRC check)"
    except zipfile.BadZipFile as e:
        return f"not a whole zip archive ({e}): truncated or not this format"
    except (zipfile.LargeZipFile, NotImplementedError, EOFError) as e:
        return f"corrupt zip archive ({type(e).__name__}: {e})"
    return None


def _varint(f, pos: int) -> tuple[int, int]:
    f.seek(pos)
    data = f.read(10)
    value = shift = 0
    for i, b in enumerate(data):
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ValueError("bad varint")


def _onnx(f, size: int) -> str | None:
    """Walk the ModelProto's top-level fields (tag, then a varint, 8 bytes, 4 bytes or a length and
    that many bytes) without decoding them: the last one must end exactly at the end of the file."""
    pos, graph, fields = 0, False, 0
    try:
        while pos < size:
            tag, pos = _varint(f, pos)
            number, wire = tag >> 3, tag & 7
            if number == 0 or number > 64:
                return "not an ONNX model (bad protobuf field)"
            if wire == 0:
                _, pos = _varint(f, pos)
            elif wire == 1:
                pos += 8
            elif wire == 2:
                n, pos = _varint(f, pos)
                pos += n
            elif wire == 5:
                pos += 4
            else:
                return "not an ONNX model (bad protobuf wire type)"
            graph = graph or number == 7
            fields += 1
    except ValueError:
        return "not an ONNX model (bad protobuf varint)"
    if pos > size:
        return f"truncated ONNX model (its last field ends at byte {pos}, the file has {size})"
    if not graph:
        return "not an ONNX model (no graph)"
    return None


def _safetensors(f, size: int) -> str | None:
    if size < 8:
        return "truncated safetensors file (no header)"
    f.seek(0)
    (n,) = struct.unpack("<Q", f.read(8))
    if n > min(size - 8, MAX_SAFETENSORS_HEADER):
        return "not a safetensors file (header length out of range)"
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "not a safetensors file (its header is not JSON)"
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]
    want = 8 + n + max(ends, default=0)
    if want != size:
        return (f"truncated safetensors file ({size} bytes, its header says {want})" if want > size
                else f"safetensors file with {size - want} bytes after its last tensor")
    return None


def _tflite(f, head: bytes, size: int) -> str | None:
    """The FlatBuffer identifier, then every weight buffer of the Model table (its field 4): a
    buffer's bytes (inline, or at an offset for models over 2 GB) must lie inside the file."""
    if size < 8 or head[4:8] != b"TFL3":
        return "not a TFLite model (no TFL3 identifier)"

    def u(fmt: str, pos: int) -> int:
        n = struct.calcsize(fmt)
        if pos < 0 or pos + n > size:
            raise EOFError
        f.seek(pos)
        return struct.unpack(fmt, f.read(n))[0]

    def field(table: int, i: int) -> int:   # position of field i of a table, 0 when absent
        vtable = table - u("<i", table)
        return u("<H", vtable + 4 + 2 * i) + table if 4 + 2 * i < u("<H", vtable) else 0
    try:
        model = u("<I", 0)
        at = field(model, 4)
        buffers = at + u("<I", at) if at else 0
        for j in range(u("<I", buffers) if buffers else 0):
            elem = buffers + 4 + 4 * j
            buf = elem + u("<I", elem)
            data = field(buf, 0)
            if data:
                vec = data + u("<I", data)
                if vec + 4 + u("<I", vec) > size:
                    raise EOFError
            offset = field(buf, 1)
            if offset and u("<Q", offset) > 1 and u("<Q", offset) + u("<Q", field(buf, 2)) > size:
                raise EOFError
    except EOFError:
        return "truncated TFLite model (a weight buffer ends past the end of the file)"
    return None


def _hdf5(f, head: bytes, size: int) -> str | None:
    """The HDF5 signature and the superblock's end-of-file address (a truncated file is shorter)."""
    if head[:8] != b"\x89HDF\r\n\x1a\n":
        return "not an HDF5 file (no signature)"
    f.seek(0)
    sb = f.read(96)
    version = sb[8]
    if version in (0, 1):
        n = sb[13]
        at = 24 + (4 if version == 1 else 0) + 2 * n
    elif version in (2, 3):
        n = sb[9]
        at = 12 + 2 * n
    else:
        return None
    if n not in (2, 4, 8) or len(sb) < at + n:
        return "not an HDF5 file (bad superblock)"
    eof = int.from_bytes(sb[at:at + n], "little")
    if eof > size:
        return f"truncated HDF5 file ({size} bytes, its superblock says {eof})"
    return None


def problems(files: list[tuple[str, str]], model_dir: str | None,
             deep: bool = False) -> list[tuple[str, str, str]]:
    """(step, path, problem) of each (step, relative file) that is missing or does not look
    loadable under ``model_dir``."""
    out = []
    for step, rel in files:
        if not model_dir:
            out.append((step, rel, "no --models given"))
            continue
        path = Path(model_dir) / rel
        what = problem(path, deep=deep)
        if what:
            out.append((step, str(path), what))
    return out
