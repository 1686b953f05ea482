"""Builders shared by every workflow: task + teachers + student + config → a ready :class:`Distiller`.

``experiments/distill.py``, ``train_teachers.py``, the Gymnasium env and the learn/replay/compare
scripts all build their KD run here, so there is one pipeline, not one per script.

Model sources (``teachers``, ``student``) are strings:

* a preset name (``tiny-2x128``, …, see :data:`kd_backend.models.PRESETS`): built from a config
  with a WordPiece tokenizer trained on the task's training text;
* a pretrained preset (``minilm-l1`` … ``minilm-l6``, see :data:`kd_backend.pretrained.PRETRAINED`):
  the bottom K layers of a pretrained BERT shipped in a pip package (verified by sha256), with
  its own tokenizer and a new task head.
  As a *teacher*, either kind of preset is fine-tuned on the task on first use and kept under
  ``cache_dir/models`` (later runs load it);
* a local checkpoint directory (``save_pretrained`` layout);
* a Hugging Face hub id (needs network; a clear error offline).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from kd_backend.config import (  # noqa: F401 (re-exported)
    STUDENT_INITS,
    BackendConfig,
    DistillerConfig,
    _check_source,
    _is_preset,
)
from kd_backend.data import TaskData, load_task
from kd_backend.distiller import Distiller, Teacher
from kd_backend.errors import ConfigError
from kd_backend.io import atomic_write_json, check_integrity, write_integrity
from kd_backend.locking import FolderLock
from kd_backend.metrics import constant_score, no_better_than_constant
from kd_backend.models import (
    PRESETS,
    build_model,
    init_student_from_teacher,
    load_encoder,
    load_model,
)
from kd_backend.plan import EpochPlan, EvalStats
from kd_backend.pretrained import PRETRAINED, is_pretrained, pretrained_path
from kd_backend.synthetic import SyntheticConfig
from kd_backend.tokenization import tokenizer_fingerprint, train_wordpiece_tokenizer

logger = logging.getLogger(__name__)

def load_task_data(cfg: BackendConfig) -> TaskData:
    """Load the configured task with its train / ctrl / dev splits."""
    synthetic = SyntheticConfig(num_train=cfg.synthetic_train, num_dev=cfg.synthetic_dev, seed=cfg.data_seed)
    return load_task(
        cfg.task, cfg.data_dir, ctrl_fraction=cfg.ctrl_fraction, ctrl_max=cfg.ctrl_max, ctrl_rule=cfg.ctrl_rule,
        transfer=cfg.transfer, seed=cfg.data_seed,
        train_limit=cfg.train_limit, dev_limit=cfg.dev_limit, synthetic=synthetic,
        dev_file=cfg.dev_file, text_columns=cfg.text_columns, label_column=cfg.label_column,
    )


def task_tokenizer(task: TaskData, vocab_size: int, cache_dir: str | Path) -> Any:
    """The WordPiece tokenizer trained on the task's training text (cached on disk)."""
    from transformers import AutoTokenizer

    key = hashlib.sha256(f"{task.train.fingerprint}:{vocab_size}".encode()).hexdigest()[:24]
    path = Path(cache_dir) / "tokenizers" / key
    if (path / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(str(path))
    texts = list(task.train.text_a) + list(task.train.text_b or ())
    tok = train_wordpiece_tokenizer(texts, vocab_size=vocab_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=key))
    tok.save_pretrained(str(tmp))
    try:
        tmp.rename(path)  # atomic; if another process won the race, keep its copy
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return tok


def teacher_recipe(source: str, cfg: BackendConfig) -> tuple[int, float]:
    """(epochs, lr) used to fine-tune preset teacher ``source`` on first use."""
    pretrained = is_pretrained(source)
    epochs = cfg.teacher_epochs if cfg.teacher_epochs is not None else (2 if pretrained else 3)
    lr = cfg.teacher_lr if cfg.teacher_lr is not None else (1e-4 if pretrained else 5e-4)
    return epochs, lr


def preset_factory(preset: str, task: TaskData, tokenizer: Any) -> Callable[[int], nn.Module]:
    """``seed -> fresh model`` for a preset sized for the task and tokenizer."""
    spec = task.spec

    def make(seed: int) -> nn.Module:
        return build_model(
            preset, spec.num_labels, len(tokenizer), pad_token_id=tokenizer.pad_token_id or 0,
            is_regression=spec.is_regression, seed=seed,
        )

    return make


def pretrained_factory(name: str, task: TaskData) -> tuple[Callable[[int], nn.Module], Any]:
    """``seed -> model`` for pretrained preset ``name`` (bottom layers, new seeded head) and its tokenizer.

    The shipped weights are read and verified once; each call copies them into a new model.
    """
    spec = task.spec
    full, tokenizer = load_encoder(name, spec.num_labels, spec.is_regression, task=spec.name)
    layers = PRETRAINED[name].num_layers

    def make(seed: int) -> nn.Module:
        return init_student_from_teacher(full, layers, "first", num_labels=spec.num_labels, seed=seed)

    return make, tokenizer


def load_teacher(source: str, cfg: BackendConfig, task: TaskData) -> Teacher:
    """A teacher from a checkpoint dir or hub id, or a preset fine-tuned on first use (then cached).

    Presets (random-weight or pretrained) are fine-tuned with :func:`teacher_recipe`'s epochs and lr,
    the run's batch size, length, weight decay, clipping and warm-up, and cached under a key of
    that recipe, the data and the tokenizer.
    """
    if not (_is_preset(source) or is_pretrained(source)):
        model, tok = load_model(source, task.spec.num_labels, task.spec.is_regression)
        return Teacher(name=Path(source).name or source, model=model, tokenizer=tok)
    epochs, lr = teacher_recipe(source, cfg)
    if is_pretrained(source):
        from transformers import AutoTokenizer

        # Only the tokenizer keys the recipe; the weights are read only if the teacher must be fine-tuned.
        tokenizer = AutoTokenizer.from_pretrained(str(pretrained_path(source)))
        weights = PRETRAINED[source].sha256
    else:
        tokenizer = task_tokenizer(task, cfg.vocab_size, cfg.cache_dir)
        weights = None
    labelled = task.train if task.train.labelled.all() else task.train.select(np.flatnonzero(task.train.labelled))
    recipe = {  # teachers learn from gold labels: a transfer set does not change them
        "preset": source, "task": labelled.fingerprint, "tokenizer": tokenizer_fingerprint(tokenizer),
        "epochs": epochs, "lr": lr, "batch_size": cfg.batch_size,
        "max_seq_length": cfg.max_seq_length, "seed": cfg.data_seed,
    }
    if weights is not None:  # new keys only where they change the recipe (old cache entries stay valid)
        recipe.update(weights=weights, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm)
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:24]
    out = Path(cfg.cache_dir) / "models" / f"{source}-{key}"
    # A second process that needs the same teacher waits for the first to fine-tune it, then loads it.
    with FolderLock(out.parent / f"{out.name}.lock", wait=True):
        if out.exists():
            _check_cached_teacher(out)
        cached = (out / "config.json").exists()
        if not cached:
            logger.info("fine-tuning teacher %s on %s (first use; cached in %s)", source, task.spec.name, out)
            train_config = DistillerConfig(
                epochs=epochs, batch_size=cfg.batch_size, eval_batch_size=cfg.eval_batch_size, lr=lr,
                weight_decay=cfg.weight_decay, warmup_ratio=0.1, max_grad_norm=cfg.max_grad_norm,
                max_seq_length=cfg.max_seq_length, device=cfg.device, bf16=cfg.bf16, seed=cfg.data_seed,
                cache_dir=cfg.cache_dir, progress=cfg.progress,
            )
            factory = pretrained_factory(source, task)[0] if weights else preset_factory(source, task, tokenizer)
            fine_tune(task, factory, tokenizer, train_config, out)
            write_integrity(out)
    if cached:  # fine_tune warned when it trained it; a cached one would otherwise pass in silence
        warn_if_teacher_learned_nothing(out, task, source)
    model, tok = load_model(str(out), task.spec.num_labels, task.spec.is_regression)
    return Teacher(name=source, model=model, tokenizer=tok)


def warn_if_teacher_learned_nothing(folder: Path, task: TaskData, name: str) -> bool:
    """Warn when a cached teacher's recorded dev score (``dynakd_eval.json``, written when it was
    fine-tuned) is no better than predicting a constant; return whether it warned.

    :param folder: the cached teacher's folder.
    :param task: the task it was fine-tuned on (its dev labels give the constant predictor's score).
    :param name: the teacher's name, for the message.
    """
    record = folder / "dynakd_eval.json"
    if not record.exists():
        return False
    evals = json.loads(record.read_text())
    if not evals:
        return False
    score = float(evals[-1]["score"])
    floor = constant_score(task.spec, np.asarray(task.dev.labels))
    if not no_better_than_constant(score, floor):
        return False
    logger.warning(
        "cached teacher %s scored %.4f on %s dev when it was fine-tuned, no better than predicting a constant "
        "(%.4f): distilling from it teaches the student nothing. Fine-tune it again with another --teacher-lr or "
        "--teacher-epochs (they key the cache), or leave it out of --teachers.",
        name, score, task.spec.name, floor,
    )
    return True


def _check_cached_teacher(folder: Path) -> None:
    """Verify a cached fine-tuned teacher against its checksum record; remove it (so it is fine-tuned
    again) when a file changed, went missing or was added. A folder cached by an older DynaKD has no
    record: its checksums are recorded now, and checked from then on."""
    problems = check_integrity(folder)
    if problems is None:
        if (folder / "config.json").exists():
            write_integrity(folder)
            logger.info("recorded the checksums of cached teacher %s (cached before DynaKD checked them)", folder)
        return
    if problems:
        logger.warning(
            "cached teacher %s fails its integrity check (%s): it is removed and fine-tuned again",
            folder, ", ".join(problems[:4]) + (", ..." if len(problems) > 4 else ""),
        )
        shutil.rmtree(folder)


def fine_tune(
    task: TaskData,
    factory: Callable[[int], nn.Module],
    tokenizer: Any,
    config: DistillerConfig,
    out_dir: str | Path | None = None,
) -> tuple[Distiller, list[EvalStats]]:
    """Plain fine-tuning on gold labels (teachers and the no-KD baseline); exports when ``out_dir``.

    :return: the distiller (holding the trained model) and the dev evaluation after each epoch.
    """
    distiller = Distiller(task, factory, tokenizer, teachers=(), config=config)
    plan = EpochPlan(kd_weight=0.0, hidden_weight=0.0)
    evals = []
    for _ in range(config.epochs):
        distiller.train_epoch(plan)
        evals.append(distiller.evaluate("dev"))
    floor = constant_score(task.spec, np.asarray(task.dev.labels))
    if evals and no_better_than_constant(evals[-1].score, floor):
        logger.warning(
            "fine-tuning on %s ended at dev score %.4f, no better than predicting a constant (%.4f): the model "
            "learned nothing. Try another learning rate (lr=%g; the teacher recipe uses 1e-4 for pretrained "
            "weights, 5e-4 from scratch; lower it if the training loss stalled high) or more epochs (%d): "
            "--teacher-lr / --teacher-epochs for the KD scripts' teachers, --lr / --epochs for train_teachers.py.",
            task.spec.name, evals[-1].score, floor, config.lr, config.epochs,
        )
    if out_dir is not None:
        distiller.export_student(out_dir)
        atomic_write_json(Path(out_dir) / "dynakd_eval.json", [e.to_dict() for e in evals])
    return distiller, evals


def build_student(cfg: BackendConfig, task: TaskData, teachers: list[Teacher] | None = None) -> tuple[Callable[[int], nn.Module], Any]:
    """The student factory (``seed -> model``) and tokenizer described by ``cfg``.

    The student comes from ``cfg.student`` alone (``teachers`` is accepted for compatibility and not
    read): a preset is built with random weights, a pretrained preset or checkpoint is loaded (all of
    its layers with ``student_init='fresh'``, else ``student_layers`` of them), with a new head where
    it has none. ``freeze_embeddings`` freezes the word embeddings of whatever is built.
    """
    spec = task.spec
    if _is_preset(cfg.student):
        tokenizer = task_tokenizer(task, cfg.vocab_size, cfg.cache_dir)
        factory = preset_factory(cfg.student, task, tokenizer)
    elif cfg.student_init == "fresh" and is_pretrained(cfg.student):
        factory, tokenizer = pretrained_factory(cfg.student, task)
    else:
        # A pretrained encoder (preset, folder or hub id) read once; each seed gets a copy with a new head.
        source, tokenizer = load_encoder(cfg.student, spec.num_labels, spec.is_regression, task=spec.name)
        if cfg.student_init == "fresh":
            layers, strategy = source.config.num_hidden_layers, "first"
        else:
            layers, strategy = cfg.student_layers, cfg.student_init

        def factory(seed: int) -> nn.Module:
            return init_student_from_teacher(source, layers, strategy=strategy, num_labels=spec.num_labels, seed=seed)

        factory(0)  # fail now (too many layers, not a BERT) rather than at the first reset

    if not cfg.freeze_embeddings:
        return factory, tokenizer

    def frozen(seed: int) -> nn.Module:
        model = factory(seed)
        model.get_input_embeddings().weight.requires_grad_(False)
        return model

    return frozen, tokenizer


def check_model_sources(cfg: BackendConfig) -> None:
    """Resolve every teacher and the student before any model is loaded or fine-tuned, so that a bad
    later name does not cost the fine-tuning of the earlier teachers.

    A preset is fine; an existing path must be a model folder (with ``config.json``); a name that is a
    local path (starts with ``.``, ``/`` or ``~``, or whose first folder exists here) must exist; a
    hub id must be in the local Hugging Face cache when the hub is offline (``HF_HUB_OFFLINE=1``).

    :raises ConfigError: naming the model and the fix.
    """
    import os

    for role, source in [*(("teacher", t) for t in cfg.teachers), ("student", cfg.student)]:
        if source in PRESETS or source in PRETRAINED:
            continue
        path = Path(source).expanduser()
        if path.exists():
            if not (path.is_dir() and (path / "config.json").is_file()):
                raise ConfigError(
                    f"{role} {source!r} is not a model folder (no config.json in it); pass a folder written by "
                    "train_teachers.py or save_pretrained, a preset, or a hub id"
                )
            continue
        if source.startswith((".", "/", "~")) or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()):
            raise ConfigError(
                f"{role} folder {source!r} does not exist (resolved to {path.absolute()}); fine-tune it first "
                "(experiments/train_teachers.py --out FOLDER) or name a preset"
            )
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(source, "config.json"), str):
                raise ConfigError(
                    f"{role} {source!r} is neither a folder nor a preset, and as a hub id it is not in the local "
                    "Hugging Face cache while the hub is offline (HF_HUB_OFFLINE=1); download it first or use a preset"
                )


def build_distiller(cfg: BackendConfig, task: TaskData | None = None, quiet_epochs: bool = False) -> Distiller:
    """Load the task and the teachers (training preset teachers on first use) and build the distiller.

    :param task: the loaded task (default: loaded from ``cfg``).
    :param quiet_epochs: train epochs without progress bars even when ``cfg.progress`` is on (for
        envs, whose workflows show one bar per episode): teacher fine-tuning and caching, done here,
        still show theirs.
    """
    check_model_sources(cfg)
    task = task or load_task_data(cfg)
    teachers = [load_teacher(src, cfg, task) for src in cfg.teachers]
    factory, tokenizer = build_student(cfg, task, teachers)
    distiller = Distiller(task, factory, tokenizer, teachers=teachers, config=cfg.distiller_config())
    if quiet_epochs:  # after construction: the caching above showed its bars
        distiller.config = replace(distiller.config, progress=False)
    return distiller


def config_dict(cfg: Any) -> Any:
    """A JSON/YAML-ready form of a (nested) config dataclass: tuples, nested ones too, become lists."""
    if is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [config_dict(v) for v in cfg]
    return cfg


__all__ = [
    "BackendConfig", "build_distiller", "build_student", "fine_tune", "load_task_data", "load_teacher",
    "pretrained_factory", "task_tokenizer", "teacher_recipe", "config_dict",
]
