"""Atomic writes and what a failed write tells the user, in one place.

Every file a reader may open while it is being written (status, manifests, checkpoints,
metrics rewritten on resume, the index) is written under a temporary name of its own and
renamed into place, so a reader sees the old file or the new one, never half of one. A write
that fails (a full disk, a folder that cannot be written) removes its temporary file and
raises :class:`WriteError`, which names the file and says how much space is left.
"""
from __future__ import annotations

import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator


class WriteError(OSError):
    """A file could not be written; the message names it, the reason and the free space."""


def temp_name(path: Path) -> Path:
    """A temporary name beside ``path``, unique per process and thread (two writers of the same
    file, e.g. a job and the app cancelling it, must not rename each other's temp file away)."""
    return path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def free_space(path: Path) -> str:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return f"{shutil.disk_usage(p).free / 2**20:,.1f} MiB free on that disk"
    except OSError:
        return "free space unknown"


def explain(path: Path, e: BaseException, what: str = "") -> WriteError:
    """A :class:`WriteError` for a failed write of ``path`` (numpy's partial-write errors say
    only "N requested and M written", which is a full disk)."""
    import errno

    reason = getattr(e, "strerror", None) or str(e)
    if (getattr(e, "errno", None) == errno.ENOSPC or "os error 28" in str(e)
            or ("requested and" in str(e) and "written" in str(e))):
        reason = f"the disk is full (No space left on device: {e})"
    return WriteError(
        f"could not write {what + ' ' if what else ''}{path}: {reason} ({free_space(Path(path))}). Nothing already"
        " finished was lost; free some space (or choose another folder) and rerun the same command to resume."
    )


@contextmanager
def atomic_path(path: str | os.PathLike, what: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed
    and the error is re-raised as :class:`WriteError` (``path`` itself is untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise explain(path, e, what) from e
    except BaseException:
        _remove(tmp)
        raise


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any], what: str = "") -> Path:
    """``write(tmp)`` then rename into place (see :func:`atomic_path`)."""
    with atomic_path(path, what) as tmp:
        write(tmp)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str, what: str = "") -> Path:
    return write_atomic(path, lambda t: t.write_text(text), what)


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
