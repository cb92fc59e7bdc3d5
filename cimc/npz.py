"""Deterministic, atomic ``.npz`` writing, and reading of archives from untrusted hands.

``numpy.savez`` stamps the current time into each zip entry, so two runs give
different bytes. cimc promises byte-identical outputs for identical inputs, so
it writes the archive itself with a fixed timestamp and sorted keys, through a
temporary file renamed into place so that a crash leaves nothing half-written.

Reading (``--inputs``, ``--calib``, IR sidecars and programming images) goes
through :func:`read_archive` and :func:`npy_from_bytes`, which check what
``numpy.load`` takes on trust: entry names that escape the archive or repeat,
declared sizes beyond the available memory (a decompression bomb is refused
before anything is inflated), ``.npy`` headers whose shape does not match the
bytes that follow (which would otherwise allocate the declared shape first),
and pickled objects.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cimc.diagnostics import CimcError

_EPOCH = (1980, 1, 1, 0, 0, 0)

# What zipfile.ZipFile(path) raises for a file that is not a readable zip archive (a truncated or foreign file; a
# NotImplementedError for an entry that needs a newer zip version than zipfile reads, found by fuzzing).
ZIP_OPEN_ERRORS = (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """The bytes of an ``.npz`` that ``numpy.load`` reads, identical for identical arrays."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            zf.writestr(info, payload.getvalue())
    return buffer.getvalue()


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    with open_atomic(path) as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def open_atomic(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` (atomic rename) only if the block completes; large outputs stream through it."""
    target = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    except OSError as e:
        raise CimcError(f"cannot write {target}: {e.strerror}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise CimcError(f"cannot write {target}: {e.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def escapes_archive(name: str) -> bool:
    """Whether an archive entry name would leave the folder it is extracted to (absolute, ``..``, a drive)."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]


def read_archive(path: str | os.PathLike[str], what: str = "", kind: str = ".npz archive") -> dict[str, bytes]:
    """Every entry of the zip archive at ``path``, by name; anything that is not a sound archive is a CimcError.

    ``what`` names the file's role in messages ("inputs", "calibration data"), ``kind`` the format expected.
    """
    from cimc.limits import check_allocation

    label = f"{what} {path}" if what else str(path)
    try:
        zf = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CimcError(f"cannot read {label}: no such file") from None
    except IsADirectoryError:
        raise CimcError(f"cannot read {label}: it is a directory") from None
    except ZIP_OPEN_ERRORS as e:
        hint = " (a .npy file: save with numpy.savez instead)" if _is_npy(path) else ""
        raise CimcError(f"cannot read {label}: not a {kind}{hint} (truncated or not a zip archive: {e})") from None
    with zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        for name in names:
            if escapes_archive(name):
                raise CimcError(f"cannot read {label}: entry '{name}' escapes the archive")
        if len(set(names)) != len(names):
            raise CimcError(f"cannot read {label}: entries {sorted({n for n in names if names.count(n) > 1})} appear twice")
        check_allocation(sum(i.file_size for i in infos), f"the entries of {label}", factor=2)
        try:
            return {i.filename: zf.read(i) for i in infos}
        # zipfile raises NotImplementedError for a compression method it lacks, RuntimeError for encryption.
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError,
                RuntimeError, zlib.error) as e:
            raise CimcError(f"cannot read {label}: corrupt archive ({e})") from None


def _is_npy(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(6) == b"\x93NUMPY"
    except OSError:
        return False


def npy_from_bytes(data: bytes, where: str) -> np.ndarray:
    """The array an ``.npy`` entry holds; a header that does not match its data, or an object dtype, is a CimcError."""
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"unsupported .npy version {version}")
        shape, fortran, dtype = read_header[version](buffer, max_header_size=10_000)
    except (ValueError, SyntaxError, TypeError, EOFError) as e:
        raise CimcError(f"{where} is not a readable .npy array ({_first_line(e)})") from None
    if dtype.hasobject:
        raise CimcError(f"{where} holds Python objects, which cimc never unpickles")
    count = math.prod(shape)
    offset = buffer.tell()
    if count * dtype.itemsize != len(data) - offset:
        raise CimcError(f"{where} declares shape {list(shape)} of {dtype} ({count * dtype.itemsize} bytes) but holds "
                        f"{len(data) - offset} bytes")
    array = np.frombuffer(data, dtype, count, offset).reshape(shape, order="F" if fortran else "C")
    return array.copy(order="K")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def load_npz(path: str | os.PathLike[str], what: str = "") -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, read eagerly through :func:`read_archive`; pickled objects are refused."""
    arrays: dict[str, np.ndarray] = {}
    label = f"{what} {path}" if what else str(path)
    for name, data in read_archive(path, what).items():
        if not name.endswith(".npy"):
            raise CimcError(f"cannot read {label}: entry '{name}' is not an .npy array")
        arrays[name[:-len(".npy")]] = npy_from_bytes(data, f"entry '{name}' of {label}")
    return arrays


_HASH_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read 1 MB at a time: a model file is weights-sized, and holding it whole for its
    digest would add its size to the compile's peak memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
