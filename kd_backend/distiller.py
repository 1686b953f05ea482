"""The distiller: one object that runs a KD run epoch by epoch, one :class:`EpochPlan` at a time.

Heavy state is built once in ``__init__`` — tokenized splits (one flat array per tokenizer and
split) and teacher outputs (from the cache, see :mod:`kd_backend.cache`). :meth:`Distiller.reset`
only re-initialises the student, the optimizer and the schedule, so an RL controller can run
hundreds of KD runs over the same data without paying for data or teachers again.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kd_backend import losses
from kd_backend.batching import EncodedSplit, length_grouped_batches
from kd_backend.cache import (
    TeacherOutputs,
    cache_key,
    compute_teacher_outputs,
    load_or_build,
)
from kd_backend.config import (
    DistillerConfig,  # re-exported: kd_backend.distiller.DistillerConfig
)
from kd_backend.data import TaskData
from kd_backend.errors import ConfigError, ModelError, NonFiniteLossError
from kd_backend.forward import forward_logits_cls, move_batch
from kd_backend.mechanisms import objective_weights, teacher_weights
from kd_backend.metrics import compute_metrics, main_score
from kd_backend.models import (
    export_model,
    forward_flops,
    hidden_size,
    model_fingerprint,
    model_size,
    num_layers,
    resolve_layer_map,
)
from kd_backend.objective import TeacherBatch, combine_terms, kd_objective, teacher_kd_terms
from kd_backend.plan import EpochPlan, EpochStats, EvalStats
from kd_backend.teacher_source import CachedTeachers, OnlineTeachers, TeacherSource
from kd_backend.tokenization import encode_texts, tokenizer_fingerprint
from kd_backend.uncertainty import (
    normalized_entropy,
    select_most_uncertain,
    uncertainty_scores,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "ctrl", "dev")


@dataclass(frozen=True)
class RunState:
    """An in-memory copy of a KD run's full state between two :meth:`Distiller.train_epoch` calls.

    Taken by :meth:`Distiller.snapshot` and put back by :meth:`Distiller.restore`: the student and
    projection weights, the optimizer state (moments, step counts, learning rate), the position in
    the learning-rate schedule, every RNG the run draws from (numpy data order, the torch generator
    of random selection, the run's own global-RNG state for dropout), the current epoch
    permutation (between the parts of an epoch) and the per-instance uncertainty memory of
    ``scoring='stale'``. Everything is a private copy: training on after a snapshot never changes
    it, and one snapshot can be restored any number of times. It lives on the run's device.
    """

    seed: int
    epoch: int
    progress: float
    global_step: int
    student: dict[str, torch.Tensor]
    projections: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    numpy_rng: dict[str, Any]
    torch_gen: torch.Tensor
    global_rng: dict[str, torch.Tensor]
    perm: np.ndarray | None
    memory: dict[str, torch.Tensor]

    @property
    def num_bytes(self) -> int:
        """Approximate memory held (tensors only)."""
        tensors = [*self.student.values(), *self.projections.values(), *self.memory.values()]
        for state in self.optimizer["state"].values():
            tensors.extend(v for v in state.values() if isinstance(v, torch.Tensor))
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Teacher:
    """A frozen teacher: a sequence classifier fine-tuned on the task, and its tokenizer."""

    name: str
    model: nn.Module
    tokenizer: Any


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} was requested but CUDA is not available; use device='cpu' or 'auto'")
    return device


class Distiller:
    """Runs a KD run over a task, a student and zero or more teachers.

    With no teachers (and plans with ``kd_weight = hidden_weight = 0``) it is plain fine-tuning:
    this is how teachers and the no-KD baseline are trained.

    :param task: the task's splits (``train`` for training, ``ctrl`` for decisions, ``dev`` for reports).
    :param student_factory: ``seed -> model``; called by :meth:`reset` for a fresh student.
    :param student_tokenizer: the student's tokenizer (fixed across episodes).
    :param teachers: frozen teachers; they are ordered by size, smallest first.
    :param config: optimisation and execution settings.
    """

    def __init__(
        self,
        task: TaskData,
        student_factory: Callable[[int], nn.Module],
        student_tokenizer: Any,
        teachers: Sequence[Teacher] = (),
        config: DistillerConfig | None = None,
    ) -> None:
        self.task = task
        self.spec = task.spec
        self.config = config or DistillerConfig()
        self.device = resolve_device(self.config.device)
        self._autocast_dtype = torch.bfloat16 if (self.device.type == "cuda" and self.config.bf16) else None
        cpu_bf16 = self.device.type == "cpu" and torch.cpu._is_avx512_bf16_supported()
        self._score_dtype = torch.bfloat16 if self.config.score_bf16 and (cpu_bf16 or self.device.type == "cuda") else self._autocast_dtype
        self.student_factory = student_factory
        self.student_tokenizer = student_tokenizer
        self.teachers = sorted(teachers, key=lambda t: model_size(t.model))
        self._encodings: dict[str, dict[str, EncodedSplit]] = {}
        self._labels = {
            s: torch.tensor(np.asarray(task.split(s).labels), device=self.device) for s in SPLITS
        }
        # Transfer rows (no gold label) get KD only: CE is masked on them, and plans without a teacher skip them.
        self._labelled = np.asarray(task.train.labelled)
        self._has_transfer = not bool(self._labelled.all())
        if self._has_transfer:
            mask = torch.from_numpy(self._labelled).to(self.device)
            self._labelled_t = mask
            self._labels["train"] = torch.where(mask, self._labels["train"], torch.zeros_like(self._labels["train"]))
        self.student = student_factory(self.config.seed)  # rebuilt by reset(); here for its shape
        self._check_student_fits(self.student)
        self._student_enc = self._encode(student_tokenizer)
        self._pad_to = self.config.max_seq_length if self.config.pad_to_max_length else None
        self._setup_teachers()
        self.full_epoch_flops = self._plain_epoch_flops()
        self.teacher_forwards_total = 0
        self.reset(self.config.seed)

    # ------------------------------------------------------------------ setup
    def _check_student_fits(self, model: nn.Module) -> None:
        n = int(getattr(model.config, "num_labels", 0))
        if n != self.spec.num_labels:
            raise ModelError(
                f"the student has {n} output labels but task {self.spec.name} needs {self.spec.num_labels}; "
                "build it with num_labels matching the task"
            )

    def _encode(self, tokenizer: Any) -> dict[str, EncodedSplit]:
        key = tokenizer_fingerprint(tokenizer)
        if key not in self._encodings:
            enc = {}
            for split in SPLITS:
                data = self.task.split(split)
                ids, types = encode_texts(tokenizer, data.text_a, data.text_b, self.config.max_seq_length)
                enc[split] = EncodedSplit.from_lists(ids, types, tokenizer.pad_token_id or 0)
            self._encodings[key] = enc
        return self._encodings[key]

    def _setup_teachers(self) -> None:
        ls, hs = num_layers(self.student), hidden_size(self.student)
        self._teacher_enc: list[dict[str, EncodedSplit]] = []
        self._layer_maps: list[tuple[tuple[int, int], ...]] = []
        for teacher in self.teachers:
            n = int(getattr(teacher.model.config, "num_labels", 0))
            if n != self.spec.num_labels:
                raise ModelError(
                    f"teacher {teacher.name!r} has {n} labels but task {self.spec.name} has "
                    f"{self.spec.num_labels}; fine-tune it on this task first (experiments/train_teachers.py)"
                )
            teacher.model.to(self.device).eval().requires_grad_(False)
            self._teacher_enc.append(self._encode(teacher.tokenizer))
            self._layer_maps.append(resolve_layer_map(ls, num_layers(teacher.model), self.config.layer_map))
        # The student layers any teacher aligns with, and where each teacher's pairs sit among them.
        self._student_layers = sorted({s for m in self._layer_maps for s, _ in m})
        self._student_pos = [[self._student_layers.index(s) for s, _ in m] for m in self._layer_maps]
        self._proj_shapes = [
            (hs, hidden_size(t.model), len(m)) if hidden_size(t.model) != hs else None
            for t, m in zip(self.teachers, self._layer_maps)
        ]
        self._teacher_out: list[dict[str, TeacherOutputs]] = [{} for _ in self.teachers]
        self.cache_teacher_forwards = 0
        self.cache_paths: dict[tuple[int, str], Path] = {}  # (teacher index, split) -> cache file
        for k in range(len(self.teachers)):
            for split in SPLITS:
                if self.config.teacher_source == "cache" or split != "train":
                    self._teacher_outputs(k, split)
        self._teacher_source: TeacherSource
        if self.config.teacher_source == "cache":
            self._teacher_source = CachedTeachers([self._teacher_out[k]["train"] for k in range(len(self.teachers))])
        else:
            self._teacher_source = OnlineTeachers(
                [t.model for t in self.teachers], [e["train"] for e in self._teacher_enc],
                [[t for _, t in m] for m in self._layer_maps], self.device, self._pad_to, self._autocast,
            )

    def _teacher_outputs(self, k: int, split: str) -> TeacherOutputs:
        """Outputs of teacher ``k`` on a whole split (cached on disk in cache mode, memoised here)."""
        if split in self._teacher_out[k]:
            return self._teacher_out[k][split]
        teacher, enc = self.teachers[k], self._teacher_enc[k][split]
        layers = [t for _, t in self._layer_maps[k]]

        def build() -> TeacherOutputs:
            self.cache_teacher_forwards += len(enc)
            return compute_teacher_outputs(
                teacher.model, enc, layers, self.device, self.config.eval_batch_size,
                self._autocast_dtype, progress=self.config.progress, desc=f"caching {teacher.name} [{split}]",
            )

        if self.config.teacher_source == "cache":
            key = cache_key(
                model_fingerprint(teacher.model), self.task.split(split).fingerprint,
                tokenizer_fingerprint(teacher.tokenizer), self.config.max_seq_length, layers,
            )
            meta = {"teacher": teacher.name, "split": split, "task": self.spec.name}
            folder = Path(self.config.cache_dir) / "teachers"
            width = hidden_size(teacher.model)
            shapes = {"logits": (len(enc), self.spec.num_labels), "hidden": (len(enc), len(layers), width) if layers else None}
            out, _ = load_or_build(folder, key, build, len(enc), meta, shapes)
            self.cache_paths[(k, split)] = folder / f"{key}.safetensors"
        else:
            out = build()
        out = out.to(self.device)
        self._teacher_out[k][split] = out
        return out

    def _plain_epoch_flops(self) -> float:
        """Student training FLOPs of one full epoch with every training instance, transfer rows
        included (the compute unit: a CE-only epoch over the labelled rows of a transfer set costs less)."""
        enc = self._student_enc["train"]
        total = 0.0
        for idx in length_grouped_batches(enc.lengths, self.config.batch_size, rng=None):
            real, padded = enc.num_tokens(idx, self._pad_to)
            total += 3 * forward_flops(self.student, padded, len(idx), padded / len(idx))
        return max(total, 1.0)

    @property
    def num_teachers(self) -> int:
        return len(self.teachers)

    @property
    def teacher_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.teachers)

    # ------------------------------------------------------------------ episodes
    def reset(self, seed: int) -> None:
        """Start a new KD run: fresh student (seeded), optimizer, schedule and data order."""
        self.seed = int(seed)
        self.student = self.student_factory(self.seed)
        self._check_student_fits(self.student)
        self.student.to(self.device)
        gen = torch.Generator().manual_seed(self.seed + 1)
        # One projection per mapped layer pair, only where the teacher is wider or narrower.
        # nn.Linear draws its default init from the global generator before _init_linear redraws it
        # from ``gen``: fork it, so a reset leaves the caller's RNG (an RL agent's sampling) untouched.
        self.projections = nn.ModuleList()
        with torch.random.fork_rng(devices=[]):
            for shape in self._proj_shapes:
                layers = nn.ModuleList()
                if shape is not None:
                    h_s, h_t, n = shape
                    layers.extend(_init_linear(nn.Linear(h_s, h_t), gen) for _ in range(n))
                self.projections.append(layers)
        self.projections.to(self.device)
        decay, no_decay = [], []
        for name, p in list(self.student.named_parameters()) + list(self.projections.named_parameters()):
            (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.config.lr,
            fused=self.device.type == "cuda",
            foreach=self.device.type != "cuda",  # CPU: one multi-tensor update instead of one per parameter
        )
        self.rng = np.random.default_rng(self.seed)
        self.torch_gen = torch.Generator().manual_seed(self.seed + 2)
        # Dropout draws from torch's global generator; the run keeps its own state of it (see _own_rng)
        # so that anything else drawing in between (an RL agent, another run) cannot change this run.
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.manual_seed(self.seed + 3)
            self._rng_states = self._get_global_rng()
        self.epoch = 0
        self.progress = 0.0
        self.global_step = 0
        self._perm: np.ndarray | None = None
        # scoring='stale': every train instance's logits from its last forward pass (training or
        # scoring) and the epoch of that pass (-1 = never seen); the staleness test runs on the host.
        n_train = len(self._student_enc["train"])
        self._memory_logits = torch.zeros((n_train, self.spec.num_labels), dtype=torch.float32, device=self.device)
        self._memory_epoch = np.full(n_train, -1, dtype=np.int64)
        self._finite: torch.Tensor | None = None  # pending NaN/inf flag (see _check_finite)
        self._finite_terms: dict[str, torch.Tensor] | None = None

    def _cuda_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _get_global_rng(self) -> dict[str, torch.Tensor]:
        states = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        return states

    @contextlib.contextmanager
    def _own_rng(self):
        """Run a block on this run's own global-RNG state, leaving the caller's state untouched."""
        with torch.random.fork_rng(devices=self._cuda_devices()):
            torch.set_rng_state(self._rng_states["cpu"])
            if "cuda" in self._rng_states:
                torch.cuda.set_rng_state(self._rng_states["cuda"], self.device)
            try:
                yield
            finally:
                self._rng_states = self._get_global_rng()

    def _lr_factor(self, progress: float) -> float:
        w = self.config.warmup_ratio
        if progress < w:
            return progress / w
        return max(0.0, (1.0 - progress) / (1.0 - w))

    def _check_plan(self, plan: EpochPlan) -> None:
        if plan.uses_teachers and not self.teachers:
            raise ModelError(
                f"the plan uses teachers (kd_weight={plan.kd_weight}, hidden_weight={plan.hidden_weight}) "
                "but no teacher was given; pass --teacher DIR, or set kd_weight=0 and hidden_weight=0"
            )
        if plan.teacher_weights is not None and len(plan.teacher_weights) != self.num_teachers:
            raise ConfigError(
                f"EpochPlan.teacher_weights has {len(plan.teacher_weights)} entries but there are "
                f"{self.num_teachers} teachers {list(self.teacher_names)} (ordered smallest first)"
            )
        if self.spec.is_regression and plan.needs_uncertainty:
            raise ConfigError(
                f"task {self.spec.name} is regression: uncertainty needs class probabilities; use "
                "teacher_mode='fixed', objective='static' and selection='random' (or fraction=1)"
            )

    def _autocast(self, dtype: torch.dtype | None | str = "default") -> contextlib.AbstractContextManager:
        dtype = self._autocast_dtype if dtype == "default" else dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def train_epoch(self, plan: EpochPlan, part: int = 0, parts: int = 1) -> EpochStats:
        """Train on one epoch (``parts == 1``) or on chunk ``part`` of ``parts`` of the current epoch.

        Part 0 draws a new order of the training set; chunk ``p`` is its ``p``-th slice. With
        ``scope='epoch'`` and ``fraction < 1`` the chunk is scored without gradient and only its
        top-r most uncertain instances are trained on. The epoch counter advances after the last part.
        """
        if not 0 <= part < parts:
            raise ConfigError(f"part={part} must be in [0, parts={parts})")
        self._check_plan(plan)
        t0 = time.perf_counter()
        n_train = len(self._student_enc["train"])
        if part == 0 or self._perm is None:
            self._perm = self.rng.permutation(n_train)
        pool = self._perm[part * n_train // parts : (part + 1) * n_train // parts]
        if self._has_transfer and not plan.uses_teachers:
            pool = pool[self._labelled[pool]]  # nothing to learn from a transfer row without a teacher
        acc = _Accumulator(self.num_teachers)
        if plan.scope == "epoch" and plan.fraction < 1.0 and len(pool) > 0:
            if plan.scoring == "stale" and plan.selection != "random":
                scores = self._stale_scores(pool, plan, acc)
            else:
                scores = self._score(pool, plan, acc)
            keep = select_most_uncertain(torch.from_numpy(scores), plan.fraction, rounding="round").numpy()
            pool = pool[keep]
        enc = self._student_enc["train"]
        batches = [pool[b] for b in length_grouped_batches(enc.lengths[pool], self.config.batch_size, self.rng)]
        total_steps = len(batches)
        if plan.max_steps is not None:
            batches = batches[: plan.max_steps]
        start = min(1.0, (self.epoch + part / parts) / self.config.epochs)
        span = (1.0 - start) if plan.final else 1.0 / (self.config.epochs * parts)  # final: the rest of the schedule
        self.student.train()
        iterator = batches
        if self.config.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(batches, desc=f"epoch {self.epoch + 1} part {part + 1}/{parts}", unit="step", leave=False)
        with self._own_rng():
            for i, idx in enumerate(iterator):
                self.progress = start + span * i / max(total_steps, 1)
                lr = self.config.lr * self._lr_factor(self.progress) * plan.lr_scale
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self._train_step(plan, idx, acc)
        self._check_finite(None, None)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # wall_time covers the queued GPU work
        self.progress = start + span * len(batches) / max(total_steps, 1)
        finished = len(batches) == total_steps
        if part == parts - 1 and finished:
            self.epoch += 1
            self._perm = None
        self.teacher_forwards_total += acc.teacher_forwards
        return acc.stats(
            epoch=self.epoch - (1 if part == parts - 1 and finished else 0),
            part=part,
            wall_time=time.perf_counter() - t0,
            lr=self.optimizer.param_groups[0]["lr"],
            finished=finished,
        )

    @torch.inference_mode()
    def _stale_scores(self, pool: np.ndarray, plan: EpochPlan, acc: _Accumulator) -> np.ndarray:
        """Selection scores of every pool instance from its last forward pass, rescoring only the stale.

        An instance is stale when it was never seen or its last forward pass is more than
        ``stale_max_age`` epochs old; only those go through a no-grad scoring pass, so a fraction r
        of an epoch costs about r (plus a third of the stale share) instead of r + 1/3. Scores
        remembered from training forwards saw dropout (train mode); rescored ones did not.
        """
        seen = self._memory_epoch[pool]
        stale = (seen < 0) | (self.epoch - seen > self.config.stale_max_age)
        scores = np.empty(len(pool), dtype=np.float32)
        if stale.any():
            scores[stale] = self._score(pool[stale], plan, acc)  # also refreshes their memory
        if not stale.all():
            idx = torch.from_numpy(pool[~stale]).to(self.device)
            chunks = idx.split(self.config.eval_batch_size)  # bounds an online teacher's batch (kd-loss)
            remembered = [self._selection_scores(self._memory_logits[c], c, plan, acc) for c in chunks]
            scores[~stale] = torch.cat(remembered).cpu().numpy()
        return scores

    @torch.inference_mode()
    def _score(self, pool: np.ndarray, plan: EpochPlan, acc: _Accumulator) -> np.ndarray:
        """Selection scores of every pool instance (higher = kept first), one no-grad pass."""
        enc = self._student_enc["train"]
        scores = np.empty(len(pool), dtype=np.float32)
        if plan.selection == "random":
            scores[:] = torch.rand(len(pool), generator=self.torch_gen).numpy()
            return scores
        self.student.eval()
        on_device = torch.empty(len(pool), dtype=torch.float32, device=self.device)  # one copy back, not one per batch
        for b in length_grouped_batches(enc.lengths[pool], self.config.eval_batch_size, rng=None):
            idx = pool[b]
            batch = move_batch(enc.collate(idx, self._pad_to), self.device)
            with self._autocast(self._score_dtype):
                logits, _ = forward_logits_cls(self.student, batch)
            logits = logits.float()
            idx_t = torch.from_numpy(idx).to(self.device)
            on_device[torch.from_numpy(b).to(self.device)] = self._selection_scores(logits, idx_t, plan, acc)
            self._memory_logits[idx_t] = logits
            self._memory_epoch[idx] = self.epoch
            real, padded = enc.num_tokens(idx, self._pad_to)
            acc.student_flops += forward_flops(self.student, padded, len(idx), padded / len(idx))
        acc.examples_scored += len(pool)
        scores[:] = on_device.cpu().numpy()
        return scores

    @torch.no_grad()
    def _selection_scores(self, logits: torch.Tensor, ids: torch.Tensor, plan: EpochPlan, acc: _Accumulator) -> torch.Tensor:
        """(B,) scores of ``plan.selection`` (higher = kept first) for training instances ``ids``.

        The uncertainty rules and ``random`` read the student ``logits`` alone
        (:func:`~kd_backend.uncertainty.uncertainty_scores`); ``kd-loss`` is each instance's KD loss
        under the plan's teachers (:func:`~kd_backend.objective.teacher_kd_terms`), whose targets
        come from the teacher source (free from the cache, counted when online).

        :param logits: (B, C) student logits of ``ids``.
        :param ids: (B,) long training-set indices, on the device.
        """
        if plan.selection != "kd-loss":
            return uncertainty_scores(logits, plan.selection, self.torch_gen)
        u = normalized_entropy(logits) if plan.needs_uncertainty else None
        weights = teacher_weights(
            plan.teacher_mode, u, self.num_teachers, plan.teacher_weights,
            batch_size=len(ids), device=self.device, check_range=False,
        )
        targets = self._teacher_targets(plan, ids, weights, False, acc)
        kd_loss = "mse" if self.spec.is_regression else plan.kd_loss
        return teacher_kd_terms(logits.float(), targets, kd_loss, plan.temperature)

    def _teacher_targets(
        self, plan: EpochPlan, ids: torch.Tensor, weights: torch.Tensor, use_hidden: bool, acc: _Accumulator
    ) -> list[TeacherBatch | None]:
        """Each teacher's targets for training instances ``ids`` with (B, K) ``weights`` (None: not read)."""
        targets: list[TeacherBatch | None] = []
        for k in range(self.num_teachers):
            if plan.teacher_mode == "fixed" and plan.teacher_weights is not None and plan.teacher_weights[k] == 0:
                targets.append(None)  # known on the host: a teacher with fixed weight 0 is never read
                continue
            target = self._teacher_source.batch(k, ids, weights[:, k], use_hidden)
            if target is not None:
                acc.teacher_forwards += target.forwards
                acc.teacher_flops += target.flops
            targets.append(target)
        return targets

    def _train_step(self, plan: EpochPlan, idx: np.ndarray, acc: _Accumulator) -> None:
        enc = self._student_enc["train"]
        batch = move_batch(enc.collate(idx, self._pad_to), self.device)
        use_hidden = plan.hidden_weight > 0 and bool(self._student_layers)
        with self._autocast():
            logits, s_cls = forward_logits_cls(self.student, batch, self._student_layers if use_hidden else ())
        logits = logits.float()
        idx_t = torch.from_numpy(idx).to(self.device)
        self._memory_logits[idx_t] = logits.detach()  # for scoring='stale' (see _stale_scores)
        self._memory_epoch[idx] = self.epoch
        labels = self._labels["train"][idx_t]
        if self.spec.is_regression:
            ce = losses.regression_loss(logits, labels.float())
        else:
            ce = losses.ce_loss(logits, labels)
        if self._has_transfer:  # mean over the batch's labelled rows (no host sync: clamp, not a branch)
            mask = self._labelled_t[idx_t].to(ce.dtype)
            ce_mean = (ce * mask).sum() / mask.sum().clamp(min=1.0)
        else:
            ce_mean = ce.mean()
        kd_mean = ce_mean.new_zeros(())
        hid_mean = ce_mean.new_zeros(())
        if plan.uses_teachers:
            u = normalized_entropy(logits) if plan.needs_uncertainty else None
            if plan.scope == "batch" and plan.fraction < 1.0:
                sel = select_most_uncertain(self._selection_scores(logits, idx_t, plan, acc), plan.fraction)
                sel = sel.to(self.device)
            else:
                sel = torch.arange(len(idx), device=self.device)
            u_sel = None if u is None else u[sel]
            weights = teacher_weights(
                plan.teacher_mode, u_sel, self.num_teachers, plan.teacher_weights,
                batch_size=len(sel), device=self.device, check_range=False,
            )
            kd_w_i, hid_w_i = objective_weights(plan.objective, u_sel, len(sel), device=self.device, check_range=False)
            targets = self._teacher_targets(plan, idx_t[sel], weights, use_hidden, acc)
            kd_mean, hid_mean = kd_objective(
                logits[sel], targets, kd_w_i, hid_w_i,
                batch_size=len(idx), selection_norm=plan.selection_norm,
                kd_loss="mse" if self.spec.is_regression else plan.kd_loss, temperature=plan.temperature,
                with_kd=plan.kd_weight > 0,
                student_hidden=s_cls[sel] if use_hidden else None, hidden_layers=self._student_pos,
                projections=[None if shape is None else proj for shape, proj in zip(self._proj_shapes, self.projections)],
            )
            acc.add_weights(weights, kd_w_i, hid_w_i)
        total, terms = combine_terms(
            ce_mean, kd_mean, hid_mean,
            ce_weight=plan.ce_weight, kd_weight=plan.kd_weight, hidden_weight=plan.hidden_weight,
        )
        self._check_finite(total, terms)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.global_step += 1
        real, padded = enc.num_tokens(idx, self._pad_to)
        acc.student_flops += 3 * forward_flops(self.student, padded, len(idx), padded / len(idx))
        acc.add_step(terms, len(idx))

    def _check_finite(self, total: torch.Tensor | None, terms: dict[str, torch.Tensor] | None) -> None:
        """Raise :class:`NonFiniteLossError` on a NaN/inf loss (``total=None``: check what is pending).

        Reading the loss is a host sync. On the CPU every step is checked before its optimizer
        step. On CUDA each step's flag is folded into one device tensor that is read every
        ``finite_check_every`` steps and at the end of each :meth:`train_epoch` call, so the GPU
        is not stalled every step.
        """
        every = self.config.finite_check_every or (50 if self.device.type == "cuda" else 1)
        if total is not None:
            ok = torch.isfinite(total)
            self._finite = ok if self._finite is None else self._finite & ok
            self._finite_terms = terms
            if every > 1 and (self.global_step + 1) % every != 0:
                return
        if self._finite is None:
            return
        all_finite, terms = bool(self._finite), self._finite_terms
        self._finite, self._finite_terms = None, None
        if all_finite:
            return
        values = {k: float(v) for k, v in (terms or {}).items()}
        where = f"step {self.global_step}" if every == 1 else (
            f"step {self.global_step} or one of the {every - 1} steps before it (checked every {every} steps)"
        )
        raise NonFiniteLossError(
            f"non-finite loss at {where} (epoch {self.epoch}): {values}; lower the learning rate "
            "(DistillerConfig.lr), check the teacher outputs, or raise warmup_ratio"
        )

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, split: str) -> torch.Tensor:
        """Student logits ``(N, C)`` on a split, in the split's order (float32, on the device)."""
        enc = self._split_encoding(split)
        self.student.eval()
        out = torch.empty((len(enc), self.spec.num_labels), dtype=torch.float32, device=self.device)
        for idx in length_grouped_batches(enc.lengths, self.config.eval_batch_size, rng=None):
            batch = move_batch(enc.collate(idx), self.device)
            with self._autocast():
                logits, _ = forward_logits_cls(self.student, batch)
            out[torch.from_numpy(idx).to(self.device)] = logits.float()
        return out

    def _split_encoding(self, split: str) -> EncodedSplit:
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; use one of {list(SPLITS)}")
        return self._student_enc[split]

    @torch.no_grad()
    def evaluate(self, split: str = "ctrl") -> EvalStats:
        """Task metrics, loss, uncertainty and agreement with each teacher on ``split``."""
        t0 = time.perf_counter()
        enc = self._split_encoding(split)
        logits = self.predict(split)
        labels = self._labels[split]
        metrics = compute_metrics(self.spec, logits.cpu().numpy(), labels.cpu().numpy())
        if self.spec.is_regression:
            loss = float(losses.regression_loss(logits, labels.float()).mean()) if len(labels) else 0.0
            unc = 0.0
        else:
            loss = float(losses.ce_loss(logits, labels).mean()) if len(labels) else 0.0
            unc = float(normalized_entropy(logits).mean()) if len(labels) else 0.0
        agree, kl, scores = [], [], []
        for k in range(self.num_teachers):
            t = self._teacher_outputs(k, split).logits
            if self.spec.is_regression:
                span = float(labels.max() - labels.min()) or 1.0
                agree.append(float(np.clip(1 - (logits - t).abs().mean().item() / span, 0, 1)))
                kl.append(float(losses.kd_mse_loss(logits, t).mean()))
            else:
                agree.append(float((logits.argmax(-1) == t.argmax(-1)).float().mean()))
                kl.append(float(losses.kd_kl_loss(logits, t, 1.0).mean()))
            scores.append(self._teacher_score(k, split))
        flops = forward_flops(self.student, int(enc.lengths.sum()), len(enc), float(enc.lengths.mean()) if len(enc) else 0.0)
        return EvalStats(
            split=split,
            num_examples=len(enc),
            metrics=metrics,
            score=main_score(self.spec, metrics),
            loss=loss,
            mean_uncertainty=unc,
            teacher_agreement=tuple(agree),
            teacher_kl=tuple(kl),
            teacher_scores=tuple(scores),
            wall_time=time.perf_counter() - t0,
            student_flops=flops,
        )

    def _teacher_score(self, k: int, split: str) -> float:
        memo = self.__dict__.setdefault("_teacher_score_memo", {})
        if (k, split) not in memo:
            t = self._teacher_outputs(k, split).logits
            m = compute_metrics(self.spec, t.cpu().numpy(), self._labels[split].cpu().numpy())
            memo[(k, split)] = main_score(self.spec, m)
        return memo[(k, split)]

    # ------------------------------------------------------------------ persistence
    def export_student(self, out_dir: str | Path, card: str | None = None) -> Path:
        """Save the student with ``save_pretrained``, its tokenizer and its task's label names
        (projections are not exported); ``card``: a model card saved as ``README.md``
        (:func:`kd_backend.reporting.model_card`)."""
        return export_model(self.student, self.student_tokenizer, out_dir, label_names=self.spec.label_names, card=card)

    def save_checkpoint(self, path: str | Path) -> Path:
        """Write the full run state (student, projections, optimizer, schedule, RNG) atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name + ".tmp"))
        try:
            save_file({k: v.contiguous() for k, v in self.student.state_dict().items()}, str(tmp / "student.safetensors"))
            save_file({k: v.contiguous() for k, v in self.projections.state_dict().items()} or {"_": torch.zeros(0)},
                      str(tmp / "projections.safetensors"))
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            rng = {**{f"global_{k}": v for k, v in self._rng_states.items()}, "gen": self.torch_gen.get_state()}
            if self._perm is not None:
                rng["perm"] = torch.from_numpy(self._perm.astype(np.int64))
            save_file(rng, str(tmp / "rng.safetensors"))
            save_file({k: v.contiguous() for k, v in self._memory_state().items()}, str(tmp / "memory.safetensors"))
            state = {
                "seed": self.seed, "epoch": self.epoch, "progress": self.progress, "global_step": self.global_step,
                "numpy_rng": self.rng.bit_generator.state, "config": asdict(self.config),
            }
            (tmp / "state.json").write_text(json.dumps(state, indent=1))
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return path

    def snapshot(self) -> RunState:
        """An in-memory copy of the full run state (see :class:`RunState`), cheap next to an epoch.

        :meth:`restore` of it continues the run exactly as if it had never been interrupted:
        on the CPU, the epochs after a restore are bit-for-bit those of the uninterrupted run.
        """
        self._check_finite(None, None)  # a pending NaN/inf flag belongs to the steps before the snapshot
        return RunState(
            seed=self.seed, epoch=self.epoch, progress=self.progress, global_step=self.global_step,
            student={k: v.detach().clone() for k, v in self.student.state_dict().items()},
            projections={k: v.detach().clone() for k, v in self.projections.state_dict().items()},
            optimizer=copy.deepcopy(self.optimizer.state_dict()),
            numpy_rng=copy.deepcopy(self.rng.bit_generator.state),
            torch_gen=self.torch_gen.get_state().clone(),
            global_rng={k: v.clone() for k, v in self._rng_states.items()},
            perm=None if self._perm is None else self._perm.copy(),
            memory={k: v.clone() for k, v in self._memory_state().items()},
        )

    def restore(self, state: RunState) -> None:
        """Put the run back in a state taken by :meth:`snapshot` (of this distiller, or one built
        from the same config); the snapshot itself stays unchanged and reusable.

        :raises ConfigError: a snapshot whose tensors do not fit this run's student.
        """
        if not isinstance(state, RunState):
            raise ConfigError(f"restore needs a RunState from Distiller.snapshot(), got {type(state).__name__}")
        try:
            self.student.load_state_dict(state.student)  # copies into the live parameters
            self.projections.load_state_dict(state.projections)
        except RuntimeError as e:
            raise ConfigError(
                f"the snapshot does not fit this run's student or projections ({e}); restore snapshots only "
                "into the distiller (or an identically configured one) that took them"
            ) from e
        self.optimizer.load_state_dict(copy.deepcopy(state.optimizer))  # a copy: later steps must not touch it
        self.seed, self.epoch, self.progress, self.global_step = state.seed, state.epoch, state.progress, state.global_step
        self.rng.bit_generator.state = copy.deepcopy(state.numpy_rng)
        self.torch_gen.set_state(state.torch_gen.clone())
        self._rng_states = {k: v.clone() for k, v in state.global_rng.items()}
        self._perm = None if state.perm is None else state.perm.copy()
        self._set_memory_state({k: v.clone() for k, v in state.memory.items()})
        self._finite, self._finite_terms = None, None

    def _memory_state(self) -> dict[str, torch.Tensor]:
        """The per-instance memory of ``scoring='stale'``: last logits (device) and their epoch (host)."""
        return {"logits": self._memory_logits, "epoch": torch.from_numpy(self._memory_epoch)}

    def _set_memory_state(self, memory: dict[str, torch.Tensor]) -> None:
        self._memory_logits = memory["logits"].to(self.device)
        self._memory_epoch = memory["epoch"].numpy().copy()

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore a state written by :meth:`save_checkpoint` (resume or fork a run)."""
        path = Path(path)
        state = json.loads((path / "state.json").read_text())
        self.reset(state["seed"])
        self.student.load_state_dict(load_file(str(path / "student.safetensors"), device=str(self.device)))
        proj = load_file(str(path / "projections.safetensors"), device=str(self.device))
        proj.pop("_", None)
        self.projections.load_state_dict(proj)
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location=self.device))
        rng = load_file(str(path / "rng.safetensors"))
        self._rng_states = {k[len("global_"):]: v for k, v in rng.items() if k.startswith("global_")}
        self.torch_gen.set_state(rng["gen"])
        self._perm = rng["perm"].numpy() if "perm" in rng else None
        if (path / "memory.safetensors").exists():  # checkpoints older than scoring='stale' lack it
            self._set_memory_state(load_file(str(path / "memory.safetensors")))
        self.rng.bit_generator.state = state["numpy_rng"]
        self.epoch, self.progress, self.global_step = state["epoch"], state["progress"], state["global_step"]


def _init_linear(layer: nn.Linear, gen: torch.Generator) -> nn.Linear:
    with torch.no_grad():
        bound = 1.0 / math.sqrt(layer.in_features)
        layer.weight.copy_(torch.empty_like(layer.weight).uniform_(-bound, bound, generator=gen))
        layer.bias.zero_()
    return layer


class _Accumulator:
    """Sums of one train_epoch call, turned into an :class:`EpochStats`."""

    def __init__(self, num_teachers: int) -> None:
        self.steps = 0
        self.examples = 0
        self.examples_scored = 0
        self.teacher_forwards = 0
        self.student_flops = 0.0
        self.teacher_flops = 0.0
        self.terms: dict[str, torch.Tensor] = {}
        self.weight_sum: torch.Tensor | float = 0.0
        self.kd_w_sum: torch.Tensor | float = 0.0
        self.hid_w_sum: torch.Tensor | float = 0.0
        self.num_teachers = num_teachers
        self.kd_instances = 0

    def add_step(self, terms: dict[str, torch.Tensor], batch: int) -> None:
        self.steps += 1
        self.examples += batch
        for k, v in terms.items():
            self.terms[k] = self.terms.get(k, 0.0) + v  # stays on device: no sync per step

    def add_weights(self, weights: torch.Tensor, kd_w: torch.Tensor, hid_w: torch.Tensor) -> None:
        # Kept on the device: no host sync per step.
        self.weight_sum = self.weight_sum + weights.detach().sum(0)
        self.kd_w_sum = self.kd_w_sum + kd_w.detach().sum()
        self.hid_w_sum = self.hid_w_sum + hid_w.detach().sum()
        self.kd_instances += len(kd_w)

    def stats(self, epoch: int, part: int, wall_time: float, lr: float, finished: bool) -> EpochStats:
        n = max(self.steps, 1)
        losses_ = {k: float(v) / n for k, v in self.terms.items()}
        for k in ("ce", "kd", "hidden", "ce_w", "kd_w", "hidden_w", "total"):
            losses_.setdefault(k, 0.0)
        m = max(self.kd_instances, 1)
        return EpochStats(
            epoch=epoch,
            part=part,
            steps=self.steps,
            examples_trained=self.examples,
            examples_scored=self.examples_scored,
            teacher_forwards=self.teacher_forwards,
            losses=losses_,
            student_flops=self.student_flops,
            teacher_flops=self.teacher_flops,
            wall_time=wall_time,
            teacher_weights=tuple(float(x) / m for x in self.weight_sum)
            if self.kd_instances
            else (0.0,) * self.num_teachers,
            kd_instance_weight=float(self.kd_w_sum) / m if self.kd_instances else 0.0,
            hidden_instance_weight=float(self.hid_w_sum) / m if self.kd_instances else 0.0,
            lr=lr,
            epoch_finished=finished,
        )
