"""Recording a KD run: TensorBoard scalars and a JSON of every epoch's stats."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kd_backend.plan import EpochStats, EvalStats


def log_epoch_scalars(writer: Any, step: int, stats: EpochStats, evals: Mapping[str, EvalStats], names: tuple[str, ...]) -> None:
    """Write one epoch's training and evaluation scalars to a TensorBoard ``SummaryWriter``.

    :param step: the x-axis value (epoch index, or global decision index).
    :param names: teacher names, for the per-teacher scalars.
    """
    for key, value in stats.losses.items():
        writer.add_scalar(f"train/loss_{key}", value, step)
    writer.add_scalar("train/examples_trained", stats.examples_trained, step)
    writer.add_scalar("train/teacher_forwards", stats.teacher_forwards, step)
    writer.add_scalar("train/wall_time", stats.wall_time, step)
    writer.add_scalar("train/lr", stats.lr, step)
    writer.add_scalar("train/kd_instance_weight", stats.kd_instance_weight, step)
    writer.add_scalar("train/hidden_instance_weight", stats.hidden_instance_weight, step)
    for name, w in zip(names, stats.teacher_weights):
        writer.add_scalar(f"teacher_weight/{name}", w, step)
    for split, ev in evals.items():
        writer.add_scalar(f"{split}/score", ev.score, step)
        writer.add_scalar(f"{split}/loss", ev.loss, step)
        writer.add_scalar(f"{split}/uncertainty", ev.mean_uncertainty, step)
        for metric, value in ev.metrics.items():
            writer.add_scalar(f"{split}/{metric}", value, step)
        for name, agree, kl in zip(names, ev.teacher_agreement, ev.teacher_kl):
            writer.add_scalar(f"{split}/agreement_{name}", agree, step)
            writer.add_scalar(f"{split}/kl_{name}", kl, step)


def read_scalars(logdir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """All scalars under ``logdir`` as ``{tag: [(step, value), ...]}`` (for tests and reports).

    Each folder holding event files is read once, as TensorBoard reads a run: its files in name
    order, with the events a later writer purged (``SummaryWriter(purge_step=...)``) left out.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for run in sorted({events.parent for events in Path(logdir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out
