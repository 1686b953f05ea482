"""Static (or heuristic) distillation: one plan applied every epoch.

    python experiments/distill.py --task glue/sst2 --data-dir ../shared/data/glue \
        --teachers runs/teachers/sst2-4x256 runs/teachers/sst2-2x128 --student tiny-2x128 \
        --epochs 3 --teacher-mode soft --fraction 0.1 --scope epoch --out runs/sst2-soft

Writes ``OUT/metrics.json`` (per-epoch stats, ctrl and dev evaluations, final dev metrics),
``OUT/student/`` (``save_pretrained`` export with the task's label names and a model card ``README.md``)
and TensorBoard events in ``OUT/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from agents.cli import cli, save_yaml
from kd_backend.config import BackendConfig
from kd_backend.io import atomic_write_json
from kd_backend.locking import check_folder, claim_folder
from kd_backend.pipeline import build_distiller, config_dict
from kd_backend.plan import EpochPlan
from kd_backend.reporting import log_epoch_scalars, model_card, write_layout


@dataclass(frozen=True)
class DistillArgs:
    """A static KD run: the backend (task, models, optimisation) and the plan applied every epoch."""

    backend: Annotated[BackendConfig, tyro.conf.arg(name="")] = BackendConfig()
    plan: Annotated[EpochPlan, tyro.conf.arg(name="")] = EpochPlan()
    out: str = "runs/distill"
    """Output folder (metrics.json, student/, TensorBoard events)."""
    overwrite: bool = False
    """Replace the results an existing output folder holds instead of refusing to start."""


def main(args: DistillArgs) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    out = Path(args.out)
    check_folder(out, overwrite=args.overwrite)  # refused before any work
    distiller = build_distiller(args.backend)  # every input is read and checked before anything is written
    claim_folder(out, overwrite=args.overwrite)
    save_yaml(out / "config.yaml", {"backend": config_dict(args.backend), "plan": args.plan.to_dict(), "out": args.out})
    writer = SummaryWriter(str(out))
    write_layout(writer)
    untrained = distiller.evaluate("dev").score  # the reference point for the report only
    epochs = []
    for epoch in range(args.backend.epochs):
        stats = distiller.train_epoch(args.plan)
        evals = {split: distiller.evaluate(split) for split in ("ctrl", "dev")}
        log_epoch_scalars(writer, epoch + 1, stats, evals, args.plan.to_dict(), distiller.teacher_names)
        epochs.append({"train": stats.to_dict(), **{k: v.to_dict() for k, v in evals.items()}})
        print(
            f"epoch {epoch + 1}: loss {stats.losses['total']:.4f}  ctrl {evals['ctrl'].score:.4f}  "
            f"dev {evals['dev'].score:.4f}  ({stats.examples_trained} trained, {stats.wall_time:.1f}s)"
        )
    writer.close()
    final = epochs[-1]["dev"]
    card = model_card(
        task=distiller.spec.name, label_names=distiller.spec.label_names, student=args.backend.student,
        teachers=distiller.teacher_names, teacher_scores=final["teacher_scores"],
        schedule=[args.plan.to_dict()] * args.backend.epochs,
        metrics={"dev score": final["score"], **{f"dev {k}": v for k, v in final["metrics"].items()},
                 "ctrl score": epochs[-1]["ctrl"]["score"]},
        how="One fixed plan every epoch (experiments/distill.py).",
        config={"backend": config_dict(args.backend), "plan": args.plan.to_dict()},
    )
    distiller.export_student(out / "student", card=card)
    result = {
        "task": distiller.spec.name,
        "teachers": list(distiller.teacher_names),
        "teacher_dev_scores": list(final["teacher_scores"]),
        "epochs": epochs,
        "final_dev": final["metrics"],
        "final_dev_score": final["score"],
        "untrained_dev_score": untrained,
    }
    atomic_write_json(out / "metrics.json", result)
    print(f"final dev {final['metrics']} -> {out / 'metrics.json'}")
    return result


if __name__ == "__main__":
    cli(main, DistillArgs, __doc__)
