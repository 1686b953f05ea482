"""Teacher-output cache: frozen teachers are run once per dataset, never once per epoch.

For each (teacher, split) one safetensors file holds

* ``logits``: ``(N, C)`` float32 — cheap, kept exact so cached and online KD losses agree;
* ``hidden``: ``(N, L_map, H_teacher)`` float16 — the [CLS] state of each teacher layer mapped to
  the student (only [CLS]; no padding is ever stored).

The file name is a key over everything that changes the outputs: the teacher's weights, the split's
texts and labels, the tokenizer, ``max_seq_length`` and the mapped layers. A changed input gives a
new key; a truncated or corrupted file fails its checksum and is rebuilt. Files are written to a
temporary name and renamed, so a crash never leaves a half-written cache behind; each entry has a
lock (``<key>.lock``), so two processes needing it at once build it once (the second waits and
reuses it), and the temporary files of a killed writer are removed under that lock.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from kd_backend.batching import EncodedSplit, length_grouped_batches
from kd_backend.errors import CacheError, ModelError
from kd_backend.forward import forward_logits_cls, move_batch
from kd_backend.io import default_file_mode
from kd_backend.locking import FolderLock

logger = logging.getLogger(__name__)

CACHE_FORMAT_VERSION = "1"


@dataclass(frozen=True)
class TeacherOutputs:
    """A teacher's outputs on one split, indexed by instance.

    :param logits: ``(N, C)`` float32.
    :param hidden: ``(N, L_map, H)`` float16 [CLS] states of the mapped layers, or None.
    """

    logits: torch.Tensor
    hidden: torch.Tensor | None

    def to(self, device: torch.device) -> TeacherOutputs:
        return TeacherOutputs(
            self.logits.to(device), None if self.hidden is None else self.hidden.to(device)
        )

    @property
    def nbytes(self) -> int:
        n = self.logits.numel() * self.logits.element_size()
        if self.hidden is not None:
            n += self.hidden.numel() * self.hidden.element_size()
        return n


def cache_key(
    teacher_fingerprint: str,
    data_fingerprint: str,
    tokenizer_fingerprint: str,
    max_seq_length: int,
    layers: Sequence[int],
) -> str:
    """The file key: a sha256 over every input that changes a teacher's outputs."""
    payload = json.dumps(
        {
            "v": CACHE_FORMAT_VERSION,
            "teacher": teacher_fingerprint,
            "data": data_fingerprint,
            "tokenizer": tokenizer_fingerprint,
            "max_seq_length": int(max_seq_length),
            "layers": [int(x) for x in layers],
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def compute_teacher_outputs(
    model: nn.Module,
    encoded: EncodedSplit,
    layers: Sequence[int],
    device: torch.device,
    batch_size: int = 256,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "teacher",
) -> TeacherOutputs:
    """Run ``model`` once over a whole split (length-sorted batches, dynamic padding).

    :param layers: indices into ``hidden_states`` to keep ([CLS] only); empty for logits only.
    :return: outputs in the split's original order, on the CPU.
    """
    model.eval()
    n = len(encoded)
    logits_out: torch.Tensor | None = None
    hidden_out: torch.Tensor | None = None
    batches = length_grouped_batches(encoded.lengths, batch_size, rng=None)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=desc, unit="batch", leave=False)
    for idx in batches:
        batch = move_batch(encoded.collate(idx), device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits, cls = forward_logits_cls(model, batch, layers)
        if logits_out is None:
            logits_out = torch.empty((n, logits.shape[-1]), dtype=torch.float32)
            if cls is not None:
                hidden_out = torch.empty((n, cls.shape[1], cls.shape[2]), dtype=torch.float16)
        index = torch.from_numpy(idx)
        logits_out[index] = logits.float().cpu()
        if cls is not None and hidden_out is not None:
            hidden_out[index] = cls.to(torch.float16).cpu()
    if logits_out is None:  # empty split
        logits_out = torch.zeros((0, int(getattr(model.config, "num_labels", 1))), dtype=torch.float32)
    for name, values in (("logits", logits_out), ("[CLS] states", hidden_out)):
        if values is not None and not bool(torch.isfinite(values).all()):
            bad = int((~torch.isfinite(values.flatten(1))).any(1).sum())
            raise ModelError(
                f"{desc}: the teacher gave non-finite {name} for {bad} of {n} instances (a diverged teacher, or "
                "[CLS] states beyond the fp16 range of the cache); retrain or check the teacher before distilling"
            )
    return TeacherOutputs(logits_out, hidden_out)


def save_outputs(path: Path, outputs: TeacherOutputs, metadata: dict[str, str]) -> None:
    """Write ``outputs`` atomically (temporary file + rename) with a payload checksum."""
    tensors = {"logits": outputs.logits.contiguous()}
    if outputs.hidden is not None:
        tensors["hidden"] = outputs.hidden.contiguous()
    meta = {**metadata, "checksum": _checksum(tensors), "format": CACHE_FORMAT_VERSION}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_outputs(
    path: Path, expected_rows: int, key: str | None = None, shapes: dict[str, tuple[int, ...] | None] | None = None
) -> TeacherOutputs:
    """Read and verify a cache file.

    :param key: the key the file must have been written for (its metadata records it): a valid file
        of another teacher or split copied under this name is refused.
    :param shapes: the shapes the run needs, by tensor (``logits``, ``hidden``; None = must be absent).
    :raises CacheError: when the file is truncated, corrupted, written for another key or of
        another shape than the run needs.
    """
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CacheError(f"teacher cache file {path} is unreadable ({err}); it will be rebuilt") from err
    if "logits" not in tensors or meta.get("checksum") != _checksum(tensors):
        raise CacheError(f"teacher cache file {path} fails its checksum (corrupted); it will be rebuilt")
    if key is not None and meta.get("key") != key:
        raise CacheError(
            f"teacher cache file {path} was written for key {meta.get('key')!r}, not for {key!r} (a copied or "
            "older-format file); it will be rebuilt"
        )
    if tensors["logits"].shape[0] != expected_rows:
        raise CacheError(
            f"teacher cache file {path} has {tensors['logits'].shape[0]} rows, expected {expected_rows}"
        )
    for name, shape in (shapes or {}).items():
        got = tuple(tensors[name].shape) if name in tensors else None
        if got != (None if shape is None else tuple(shape)):
            raise CacheError(f"teacher cache file {path} holds {name} of shape {got}, the run needs {shape}; it will be rebuilt")
    return TeacherOutputs(tensors["logits"], tensors.get("hidden"))


def load_or_build(
    cache_dir: Path,
    key: str,
    build: Callable[[], TeacherOutputs],
    expected_rows: int,
    metadata: dict[str, str],
    shapes: dict[str, tuple[int, ...] | None] | None = None,
) -> tuple[TeacherOutputs, bool]:
    """Return cached outputs for ``key``, building (and writing) them when absent, corrupt, written
    for another key or of another shape than ``shapes`` (see :func:`load_outputs`).

    :param build: zero-argument function that computes the outputs.
    :return: (outputs, built) — ``built`` is True when the teacher had to run.
    """
    path = Path(cache_dir) / f"{key}.safetensors"
    # One process builds an entry; another that needs it at the same time waits, then reuses it.
    with FolderLock(Path(cache_dir) / f"{key}.lock", wait=True):
        for stale in Path(cache_dir).glob(f"{key}.safetensors*.tmp"):  # a killed writer's; none is live under the lock
            logger.info("removing %s, left by an interrupted cache write", stale)
            stale.unlink(missing_ok=True)
        if path.exists():
            try:
                return load_outputs(path, expected_rows, key, shapes), False
            except CacheError as err:
                logger.warning("%s", err)
        outputs = build()
        save_outputs(path, outputs, {**metadata, "key": key})
    return outputs, True

