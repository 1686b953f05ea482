"""Folder ownership with OS file locks: one process at a time writes a run folder or a cache entry.

A lock is ``fcntl.flock`` on a small file holding the owner's pid. The OS releases it when the
process exits, however it exits (a SIGKILL included), so a lock never outlives its owner and a
stale lock file is harmless: the next process simply takes it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import sys
from pathlib import Path
from typing import IO

from kd_backend.errors import ConfigError

LOCK_FILE = ".dynakd.lock"
"""The lock file of a run or output folder (inside it)."""
_HELD: dict[Path, FolderLock] = {}  # folder -> its lock, kept for the life of the process


class FolderLock:
    """An exclusive lock on ``path`` (a lock file), held until :meth:`release` or process exit.

    :param path: the lock file (created if missing).
    :param wait: block until the lock is free (True) or fail at once (False).
    :raises BlockingIOError: ``wait=False`` and another process holds the lock.
    """

    def __init__(self, path: str | Path, wait: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = open(self.path, "a+")  # noqa: SIM115 - held open on purpose
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            self._file.close()
            self._file = None
            raise
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()} {' '.join(sys.argv[:1])}\n")
        self._file.flush()

    def release(self) -> None:
        """Unlock (the file stays; it is harmless)."""
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def holder(path: str | Path) -> str:
    """Who holds a lock file, as written by its owner (``"<pid> <program>"``), or ``"unknown"``."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return "unknown"
    return text or "unknown"


def check_folder(folder: str | Path, *, overwrite: bool = False, flag: str = "--out") -> None:
    """Refuse, without touching anything, an output folder that already holds results (unless
    ``overwrite``): the cheap check a script makes before any work; :func:`claim_folder` makes it again.

    :raises ConfigError: naming the folder, what it holds and the fix.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{flag} {folder} is a file, not a folder; pass another {flag}")
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"{flag} {folder}: {existing} is a file, and a file stands where a folder is expected; pass another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {folder}: {existing} is not writable; fix its permissions or pass another {flag}")
    others = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE) if folder.is_dir() else []
    if others and not overwrite:
        raise ConfigError(
            f"{folder} already holds results ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}); "
            f"pass --overwrite to replace them, or another {flag}"
        )


def claim_folder(folder: str | Path, *, overwrite: bool = False, resume: bool = False, flag: str = "--out") -> Path:
    """Own ``folder`` for the rest of the process: lock it (refusing a folder another process
    holds, naming its pid), and refuse an existing non-empty folder unless ``overwrite`` (its
    contents are then deleted) or ``resume`` (it is continued).

    :param flag: the option that named the folder (for the messages).
    :raises ConfigError: the folder is in use, holds earlier results, or cannot be written.
    """
    folder = Path(folder)
    if not resume:
        check_folder(folder, overwrite=overwrite, flag=flag)
    key = folder.resolve()
    if key not in _HELD:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _HELD[key] = FolderLock(folder / LOCK_FILE)
        except BlockingIOError:
            raise ConfigError(
                f"{folder} is in use by another process (pid {holder(folder / LOCK_FILE)}); wait for it to finish, "
                f"stop it, or pass another {flag}"
            ) from None
        except PermissionError as err:
            raise ConfigError(f"cannot write to {folder} ({err.strerror}); pass a writable {flag}") from None
        except OSError as err:
            if err.errno == errno.EROFS:
                raise ConfigError(f"cannot write to {folder} (read-only file system); pass a writable {flag}") from None
            raise
    if overwrite and not resume:
        for p in folder.iterdir():
            if p.name != LOCK_FILE:
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return folder


def release_folder(folder: str | Path) -> None:
    """Give up a folder claimed by :func:`claim_folder` (tests; scripts hold theirs until they exit)."""
    lock = _HELD.pop(Path(folder).resolve(), None)
    if lock is not None:
        lock.release()
