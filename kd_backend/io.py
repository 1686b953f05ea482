"""Atomic file writes: a reader (or a crash) never sees half an artifact."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to a temporary file in the same folder, then rename it over ``path``."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600; artifacts get the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_figure(fig: Any, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically (rendered in memory, then renamed into place)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def default_file_mode() -> int:
    """The mode a plainly created file would get under the current umask (usually 0644)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_json(path: str | Path, data: Any) -> Path:
    """JSON-encode ``data`` (indented) and write it atomically."""
    return atomic_write_text(path, json.dumps(data, indent=1, default=_jsonable) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


INTEGRITY_FILE = "dynakd_integrity.json"
"""The checksum record DynaKD writes into a folder it exported and will load again (a cached teacher)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_digests(folder: str | Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative POSIX paths), the integrity record excepted."""
    root = Path(folder)
    return {
        p.relative_to(root).as_posix(): _sha256(p)
        for p in sorted(root.rglob("*")) if p.is_file() and p.name != INTEGRITY_FILE
    }


def write_integrity(folder: str | Path) -> Path:
    """Record the checksums of ``folder``'s files in ``folder/dynakd_integrity.json`` (atomically)."""
    return atomic_write_json(Path(folder) / INTEGRITY_FILE, {"format": 1, "files": folder_digests(folder)})


def check_integrity(folder: str | Path) -> list[str] | None:
    """What differs from ``folder``'s integrity record: changed, missing and added files, as
    ``"changed: model.safetensors"``; an empty list when nothing does; None when the folder has no
    (readable) record."""
    try:
        record = json.loads((Path(folder) / INTEGRITY_FILE).read_text())["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    now = folder_digests(folder)
    problems = [f"changed: {n}" for n in record if n in now and now[n] != record[n]]
    problems += [f"missing: {n}" for n in record if n not in now]
    problems += [f"added: {n}" for n in now if n not in record]
    return problems
