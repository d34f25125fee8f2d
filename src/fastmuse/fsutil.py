"""Atomic file and folder writes (a reader never sees a half-written file) and file hashes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets us open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on success it replaces `path` in one rename.

    If `path` already exists it is moved aside first and deleted only after the new
    folder is in place, so an interrupted save never loses the previous checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the finished folder should read like any other
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete what interrupted atomic_dir saves left in `folder` (`.NAME.*.tmp` folders being
    written, `.NAME.old-PID` folders moved aside). Call it only where no save is under way."""
    found = [p for p in Path(folder).glob(".*") if p.is_dir()
             and (p.name.endswith(".tmp") or ".old-" in p.name)]
    for p in found:
        shutil.rmtree(p, ignore_errors=True)
    return found


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where per-machine measurements are kept: $FASTMUSE_CACHE, else $XDG_CACHE_HOME/fastmuse."""
    if os.environ.get("FASTMUSE_CACHE"):
        return Path(os.environ["FASTMUSE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastmuse"


HASHED_FILES = "sha256.json"
REMEMBER_BYTES = 1 << 24  # files this big are hashed once per machine (a 3.3 GB file: ~3 s each time)


def sha256_remembered(path: str | os.PathLike) -> str:
    """sha256_file, remembered per (path, size, inode, mtime, ctime) in cache_dir(): a large
    checkpoint is hashed on its first load, not on every one. Any write to the file, or a file
    put in its place, changes its ctime (which no user-space call can set back), so it is
    hashed again."""
    path = Path(path).resolve()
    st = path.stat()
    if st.st_size < REMEMBER_BYTES:
        return sha256_file(path)
    key = f"{path}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    store = cache_dir() / HASHED_FILES
    try:
        known = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    if isinstance(known.get(key), str):
        return known[key]
    digest = sha256_file(path)
    prefix = f"{path}|"  # forget earlier versions of this file
    known = {k: v for k, v in known.items() if not k.startswith(prefix)} | {key: digest}
    with contextlib.suppress(OSError):  # a read-only home: hash again next time
        atomic_write_text(store, json.dumps(known, indent=1) + "\n")
    return digest
