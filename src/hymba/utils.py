"""Small helpers shared across the package: atomic file writes."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside `path`; move it over `path` only if the block finishes.

    A crash or an exception inside the block leaves `path` as it was (never half-written).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # the mode a plain open() would give, not mkstemp's private 0600
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary directory beside `path`; it replaces `path` (whole) only if the block finishes.

    The temporary name carries the writing process's id, so what a killed writer left behind is recognised
    and removed by the next writer of the same path."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # the mode a plain mkdir would give, not mkdtemp's private 0700
    try:
        yield tmp
        replace_dir(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(path: str) -> list[str]:
    """Delete the temporary directories that writers of `path` (`atomic_dir`) left when they were killed: those
    whose process is gone. Returns what was removed."""
    parent, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[^.]+\.tmp$")
    removed = []
    for entry in os.listdir(parent) if os.path.isdir(parent) else []:
        m = pattern.match(entry)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)
            removed.append(os.path.join(parent, entry))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def replace_dir(src: str, dest: str) -> None:
    """Move the finished directory `src` to `dest`, replacing any directory there; `dest` is never missing
    or half-written for longer than the two renames (the old one is set aside first, then removed)."""
    if not os.path.exists(dest):
        os.replace(src, dest)
        return
    parent, name = os.path.split(os.path.abspath(dest))
    old = tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=parent)
    os.rmdir(old)
    os.replace(dest, old)
    os.replace(src, dest)
    shutil.rmtree(old, ignore_errors=True)
