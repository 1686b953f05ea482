"""Fine-tune a model on a task's gold labels: a teacher, or the no-KD student baseline.

    python experiments/train_teachers.py --task glue/sst2 --data-dir ../shared/data/glue \
        --preset tiny-4x256 --epochs 3 --lr 5e-4 --out runs/teachers/sst2-4x256

``--preset`` builds a model from a config (with a WordPiece tokenizer trained on the task);
``--model`` starts from a checkpoint folder or hub id. Writes ``OUT/`` (``save_pretrained``) and
``OUT/dynakd_eval.json`` (dev metrics after each epoch).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

from common import cli

import tyro
from kd_backend.errors import ConfigError
from kd_backend.pipeline import BackendConfig, build_student, fine_tune, load_task_data


@dataclass(frozen=True)
class TrainArgs:
    """Fine-tuning on gold labels (no KD)."""

    backend: Annotated[BackendConfig, tyro.conf.arg(name="")] = BackendConfig(teachers=())
    preset: str | None = None
    """A model preset to build from a config (e.g. tiny-4x256)."""
    model: str | None = None
    """A checkpoint folder or hub id to start from instead of a preset."""
    out: str = "runs/teacher"
    """Where to save the fine-tuned model."""


def main(args: TrainArgs) -> list:
    if (args.preset is None) == (args.model is None):
        raise ConfigError("give exactly one of --preset NAME or --model DIR_OR_HUB_ID")
    cfg = replace(args.backend, teachers=(), student=args.preset or args.model, student_init="fresh")
    task = load_task_data(cfg)
    factory, tokenizer = build_student(cfg, task, [])
    _, evals = fine_tune(task, factory, tokenizer, cfg.distiller_config(), args.out)
    for epoch, ev in enumerate(evals, 1):
        print(f"epoch {epoch}: dev {ev.metrics} score {ev.score:.4f}")
    print(f"saved to {args.out}")
    return evals


if __name__ == "__main__":
    cli(main, TrainArgs, __doc__)
