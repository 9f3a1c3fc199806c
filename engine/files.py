"""File primitives every writer of a session or study uses (no engine imports).

* :func:`atomic_write` -- bytes to a temporary file beside the target, fsync, then rename: a
  reader sees the old file or the new one, never half of one; the temporary file is removed
  when the write fails (a full disk leaves nothing behind).
* :func:`atomic_save_npy` / :func:`atomic_save_npz` -- the same for arrays (never pickled).
* :func:`append_jsonl` / :func:`read_jsonl` -- JSON-lines logs: one record per line, written
  with a single ``write``; a reader takes only complete lines, and a line that does not parse
  (a writer killed mid-line) is skipped without swallowing the next record.
* :func:`sha256` -- a file's checksum, read in blocks; :func:`block_digests` -- a digest of
  every fixed-size block of a file (a damaged block is found without rereading the others).
* :func:`publish_dir` -- a directory built under a hidden temporary name and renamed into place
  whole, so a process killed while creating it leaves no half-made session behind.
* :func:`fsync_dir` -- make a rename durable.
* :func:`read_text` -- a record read only if it is a regular file of sane size: a FIFO, a
  device (a link to ``/dev/zero``) or a file of gigabytes put in a session's place is one
  :class:`UnreadableFile` naming what it is, never a read that blocks forever or eats memory.
* :func:`read_npz` -- a user's ``.npz`` read defensively: every array's header is checked (no
  objects or pickles, the kinds of numbers asked for, the size it declares against the zip's
  record and a memory limit) before a byte of data is read, so a damaged, hostile or merely
  wrong file is one :class:`ArchiveError` naming what is wrong, never a traceback or a zip bomb.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # numpy is imported where arrays are written: the UI starts without it
    import numpy as np

TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """The temporary name a write of ``path`` goes through (``.NAME.PID.tmp``)."""
    return path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write_with(path: str | Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file that is then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def atomic_write(path: str | Path, data: bytes) -> None:
    atomic_write_with(path, lambda f: f.write(data))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2).encode())


def atomic_save_npy(path: str | Path, arr: np.ndarray) -> None:
    import numpy as np

    atomic_write_with(path, lambda f: np.save(f, np.ascontiguousarray(arr), allow_pickle=False))


def npy_header(path: str | Path) -> tuple[tuple[int, ...], bool, "np.dtype", int]:
    """(shape, fortran_order, dtype, offset of the data) from an .npy file's header."""
    import numpy as np

    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = (np.lib.format.read_array_header_1_0 if major == 1 else
                np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(f)
        return shape, fortran, np.dtype(dtype), f.tell()


def atomic_save_npy_rows(path: str | Path, shape: tuple[int, ...], dtype, rows) -> None:
    """An .npy file of ``shape`` written atomically from ``rows``, consecutive row blocks
    (numpy arrays) in order: an array larger than memory never has to be whole anywhere."""
    import numpy as np

    dtype = np.dtype(dtype)

    def write(f):
        np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False,
                                                 "shape": tuple(shape)})
        n = 0
        for r in rows:
            r = np.ascontiguousarray(r, dtype=dtype)
            f.write(memoryview(r).cast("B"))
            n += r.size
        if n != int(np.prod(shape)):
            raise ValueError(f"{path}: wrote {n} numbers, the shape {shape} needs "
                             f"{int(np.prod(shape))}")

    atomic_write_with(path, write)


def atomic_save_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    import numpy as np

    atomic_write_with(path, lambda f: np.savez(f, **arrays))


def remove_temp_files(directory: str | Path) -> list[Path]:
    """Delete temporary files that a killed writer left in ``directory`` (and below); returns
    them. Only call it while holding the directory's writer lock."""
    out = []
    for p in Path(directory).rglob(f"{TMP_PREFIX}*{TMP_SUFFIX}"):
        try:
            p.unlink()
            out.append(p)
        except OSError:
            pass
    return out


def block_digest(data: bytes | memoryview) -> str:
    """The digest of one block (blake2b, 128 bits: fast, and no accidental damage slips by)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def block_digests(path: str | Path, offset: int, block: int, count: int) -> list[str | None]:
    """Digests of ``count`` consecutive blocks of ``block`` bytes starting at byte ``offset``
    (the last may be shorter: up to the end of the file); None for a block the file is too
    short to hold whole."""
    out: list[str | None] = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        for i in range(count):
            start = offset + i * block
            want = min(block, size - start) if i == count - 1 else block
            if start + want > size or want <= 0:
                out.append(None)
                continue
            f.seek(start)
            h = hashlib.blake2b(digest_size=16)
            left = want
            while left:
                data = f.read(min(left, 1 << 24))
                if not data:
                    break
                h.update(data)
                left -= len(data)
            out.append(None if left else h.hexdigest())
    return out


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


BUILDING = ".building."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned_builds(root: Path) -> None:
    """Remove the temporary directories of :func:`publish_dir` whose creator has died."""
    for p in root.glob(BUILDING + "*"):
        try:
            pid = int(p.name.split(".")[-2])
        except (ValueError, IndexError):
            continue
        if not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)


def publish_dir(root: str | Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Create ``root/name`` (``name-2``, ``name-3``... if taken) whole: ``fill(tmp)`` writes the
    contents into a hidden temporary directory, which is then renamed into place. The rename
    is atomic, and a directory that is not empty is never replaced, so concurrent creators get
    distinct names; a creator killed midway leaves only its hidden temporary directory, removed
    by the next creator in ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_abandoned_builds(root)
    tmp = root / f"{BUILDING}{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        n = 1
        while True:
            target = root / (name if n == 1 else f"{name}-{n}")
            if not target.exists():
                try:
                    os.rename(tmp, target)
                    fsync_dir(root)
                    return target
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            n += 1
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as one line. A line left incomplete by a killed writer is closed
    first, so that it cannot swallow this record."""
    line = json.dumps(record) + "\n"
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))


class UnreadableFile(ValueError):
    """A file that is not read: not a regular file, or larger than its kind can be; ``str()``
    is the reason (the caller names the file)."""


KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK:
         "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def open_regular(path: str | Path, limit: int | None = None) -> int:
    """A read-only descriptor of ``path`` if it is a regular file (of at most ``limit`` bytes);
    :class:`UnreadableFile` otherwise (FileNotFoundError when missing). Opened without waiting
    (a FIFO with no writer would block ``open`` itself) and checked on the descriptor, so what
    is read is what was checked. The caller closes it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise UnreadableFile(f"{kind}, not a regular file")
        if limit is not None and st.st_size > limit:
            raise UnreadableFile(f"{st.st_size:,} bytes, more than such a file can hold "
                                 f"({limit:,} at most)")
        os.set_blocking(fd, True)
        return fd
    except BaseException:
        os.close(fd)
        raise


def remove_links(root: str | Path) -> dict[str, str]:
    """Remove every symbolic link under the directory ``root`` (not following any): a file or
    a folder a writer of ``root`` would otherwise write through, into a user's file or another
    session. Returns {path relative to root: where the link pointed}."""
    root = Path(root)
    out = {}
    for d, dirs, names in os.walk(root):  # (os.walk follows no link to a folder)
        for n in dirs + names:
            p = Path(d) / n
            if p.is_symlink():
                out[str(p.relative_to(root))] = os.readlink(p)
                p.unlink()
    return out


def linked_part(root: str | Path, rel: str) -> str | None:
    """The first part of ``root / rel`` below ``root`` that is a symbolic link (``rel`` itself
    or a folder on the way), or None."""
    p = Path(root)
    for part in Path(rel).parts:
        p = p / part
        if p.is_symlink():
            return str(p.relative_to(root))
    return None


def read_text(path: str | Path, limit: int = 64 << 20) -> str:
    """The text (UTF-8) of the regular file ``path`` of at most ``limit`` bytes;
    :class:`UnreadableFile` when it is something else, UnicodeDecodeError when not UTF-8,
    FileNotFoundError when missing."""
    with os.fdopen(open_regular(path, limit), "rb") as f:
        return f.read(limit + 1).decode("utf-8")


# what read_jsonl reads at most per call, and the longest line it takes as a record: a log's
# tail of gigabytes without a newline (garbage) is passed over a block at a time, not reread
# whole at every poll
JSONL_BLOCK = 16 << 20
JSONL_LINE_MAX = 4 << 20


def read_jsonl(path: str | Path, start: int = 0) -> tuple[list[dict], int]:
    """Complete lines of a JSON-lines file from byte offset ``start``; returns the records and
    the offset after the last complete line (a line still being written is left for later;
    lines that are not JSON objects are skipped). Read a block at a time: a line longer than
    :data:`JSONL_LINE_MAX` is garbage, passed over (its bytes are not read again by the next
    call), and something not a regular file in the log's place reads as empty."""
    out: list[dict] = []
    pos, carry = start, b""
    try:
        f = os.fdopen(open_regular(path), "rb")
    except (FileNotFoundError, UnreadableFile):
        return out, start
    with f:
        f.seek(start)
        while block := f.read(JSONL_BLOCK):
            data = carry + block
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                if not line.strip() or len(line) > JSONL_LINE_MAX:
                    continue
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
            carry, pos = data[end:], pos + end
            if len(carry) >= JSONL_LINE_MAX:  # no line ends: garbage, passed over
                carry, pos = b"", pos + len(carry)
    return out, pos


class ArchiveError(ValueError):
    """A ``.npz`` that cannot be read as asked; ``str()`` is the one-line reason (without the
    path: the caller names the file and what it was for)."""


NPY_MAGIC = b"\x93NUMPY"
# the dtype kinds of numbers :func:`read_npz` takes: bool, signed and unsigned integers, floats
REAL_KINDS = "biuf"


def available_memory() -> int:
    """Bytes of memory available to a new allocation here (MemAvailable, else free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def read_npz(path: str | Path, names: list[str] | None = None, kinds: str = REAL_KINDS,
             max_bytes: int | None = None, headers_only: bool = False) -> dict:
    """The arrays ``names`` (default: every one) of the ``.npz`` at ``path``, each checked
    before its data is read: the archive is a zip of ``.npy`` members (not a lone ``.npy``, a
    truncated or damaged zip), each asked member exists, its header parses and declares an
    array of numbers of ``kinds`` (no object arrays, whose pickles are never loaded; no
    strings; no complex numbers unless ``kinds`` has ``c``), the member's size in the zip's
    record is that header's (a header that lies about its data), and all of them together
    declare at most ``max_bytes`` (default: half the memory available here; a zip bomb
    declaring 89 GiB is refused from its 100-byte header). Then the data are read
    (``allow_pickle=False``), the zip's CRC checked. Raises :class:`ArchiveError`. Returns
    {name: array}, or with ``headers_only`` {name: (shape, dtype)} without reading any data
    (a check cheap enough to run before a session is created)."""
    import zipfile
    import zlib

    import numpy as np

    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(len(NPY_MAGIC))
    except IsADirectoryError:
        raise ArchiveError("a folder, not a .npz file") from None
    except OSError as e:
        raise ArchiveError(f"cannot read: {e.strerror or e}") from None
    if magic == NPY_MAGIC:
        raise ArchiveError("a single .npy array, not a .npz archive (save one with "
                           "numpy.savez(path, x=..., y=...))")
    limit = available_memory() // 2 if max_bytes is None else int(max_bytes)
    try:
        with zipfile.ZipFile(path) as z:
            members = {i.filename[:-4]: i for i in z.infolist() if i.filename.endswith(".npy")}
            want = list(members) if names is None else list(names)
            missing = [n for n in want if n not in members]
            if missing:
                raise ArchiveError(f"expected arrays {', '.join(map(repr, want))}, found "
                                   f"{sorted(members) or 'none'}")
            total, out = 0, {}
            for n in want:
                info = members[n]
                with z.open(info) as m:
                    try:
                        major, _ = np.lib.format.read_magic(m)
                        read = (np.lib.format.read_array_header_1_0 if major == 1 else
                                np.lib.format.read_array_header_2_0)
                        shape, _, dtype = read(m)
                    except (ValueError, SyntaxError, EOFError) as e:
                        raise ArchiveError(f"{n}: not a numpy array ({one_reason(e)})") \
                            from None
                    head = m.tell() if hasattr(m, "tell") else None
                if dtype.hasobject:
                    raise ArchiveError(f"{n}: holds Python objects (a pickle), which are never "
                                       "loaded; save arrays of numbers")
                if dtype.kind not in kinds:
                    what = {"c": "complex numbers", "U": "strings", "S": "bytes",
                            "M": "dates", "m": "time spans", "V": "records"}.get(
                                dtype.kind, f"{dtype}")
                    raise ArchiveError(f"{n}: holds {what} ({dtype}); expected real numbers")
                nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                total += nbytes
                out[n] = (tuple(shape), dtype)
                if total > limit:
                    raise ArchiveError(f"{n}: declares {shape} {dtype}, {nbytes / 2**30:.1f} "
                                       f"GiB, more than the {limit / 2**30:.1f} GiB this machine "
                                       "can load")
                if head is not None and info.file_size != head + nbytes:
                    raise ArchiveError(f"{n}: its header declares {shape} {dtype} "
                                       f"({nbytes:,} bytes) but the archive holds "
                                       f"{max(0, info.file_size - head):,} bytes of data")
            if headers_only:
                return out
            for n in want:
                with z.open(members[n]) as m:
                    out[n] = np.lib.format.read_array(m, allow_pickle=False)
            return out
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise ArchiveError(f"not a readable .npz archive (a damaged or truncated zip: "
                           f"{one_reason(e)})") from None
    except (ValueError, OSError) as e:
        raise ArchiveError(f"damaged: {one_reason(e)}") from None


def one_reason(e: BaseException) -> str:
    """An exception's message on one line, cut to 200 characters (its type when empty)."""
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text if len(text) <= 200 else text[:199] + "…"
