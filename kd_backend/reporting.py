"""Recording a KD run: TensorBoard scalars and a JSON of every epoch's stats."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kd_backend.plan import EpochStats, EvalStats

TAG_GROUPS: dict[str, tuple[str, ...]] = {
    "plan": ("plan/fraction", "plan/ce_weight", "plan/kd_weight", "plan/hidden_weight", "plan/teacher_weight/.*",
             "plan/kd_instance_weight", "plan/hidden_instance_weight"),
    "losses": ("train/loss_.*", "train/lr"),
    "scores": ("step/ctrl_score", "step/reward", "episode/final_ctrl_score", "episode/final_dev_score", "ctrl/score",
               "dev/score"),
    "compute": ("step/compute", "episode/compute", "train/examples_trained", "train/teacher_forwards"),
}
"""DynaKD's one TensorBoard tag schema, by dashboard group (regular expressions over tags):

* ``plan/*`` — what a step applied: data fraction, loss weights, the weight teacher k actually
  received (``plan/teacher_weight/t<k>_<teacher>``), the mean instance weights of the objective;
* ``train/*`` — the step's training: ``train/loss_<term>``, ``train/lr``, ``train/examples_trained``,
  ``train/teacher_forwards``;
* ``step/*`` — what the env reports after a decision: ``step/ctrl_score``, ``step/reward``, ``step/compute``;
* ``episode/*`` — per KD run: ``episode/final_ctrl_score``, ``episode/final_dev_score``,
  ``episode/compute``, ``episode/return``;
* ``ctrl/*``, ``dev/*`` — an evaluation of that split (``distill.py``: score, loss, metrics, agreement).

:func:`write_layout` makes TensorBoard's Custom Scalars dashboard open with these groups."""


def step_scalars(plan: Mapping[str, Any], stats: Mapping[str, Any], teacher_names: Sequence[str]) -> dict[str, float]:
    """The ``plan/*`` and ``train/*`` scalars of one step (:data:`TAG_GROUPS`).

    :param plan: the applied plan (``EpochPlan.to_dict()``).
    :param stats: its training stats (``EpochStats.to_dict()``).
    :param teacher_names: the run's teachers, smallest first.
    """
    weights = stats["teacher_weights"]
    if len(weights) != len(teacher_names):
        raise ValueError(f"{len(weights)} teacher weights for {len(teacher_names)} teachers {list(teacher_names)}")
    return {
        "plan/fraction": plan["fraction"], "plan/ce_weight": plan["ce_weight"], "plan/kd_weight": plan["kd_weight"],
        "plan/hidden_weight": plan["hidden_weight"],
        **{f"plan/teacher_weight/t{k}_{name}": w for k, (name, w) in enumerate(zip(teacher_names, weights))},
        "plan/kd_instance_weight": stats["kd_instance_weight"], "plan/hidden_instance_weight": stats["hidden_instance_weight"],
        **{f"train/loss_{k}": v for k, v in stats["losses"].items()},
        "train/lr": stats["lr"], "train/examples_trained": stats["examples_trained"],
        "train/teacher_forwards": stats["teacher_forwards"],
    }


def episode_scalars(final_ctrl_score: float, final_dev_score: float | None, compute: float, episode_return: float | None) -> dict[str, float]:
    """The ``episode/*`` scalars of one finished KD run (a dev score or return of None is left out)."""
    out = {"episode/final_ctrl_score": final_ctrl_score, "episode/compute": compute}
    if final_dev_score is not None:
        out["episode/final_dev_score"] = final_dev_score
    if episode_return is not None:
        out["episode/return"] = episode_return
    return out


def write_scalars(writer: Any, scalars: Mapping[str, float], step: int) -> None:
    """Add every scalar of ``scalars`` at x = ``step``."""
    for tag, value in scalars.items():
        writer.add_scalar(tag, value, step)


def write_layout(writer: Any) -> None:
    """Write the Custom Scalars layout of :data:`TAG_GROUPS` (one chart per group, tags by regex)."""
    layout = {group: {group: ["Multiline", list(tags)]} for group, tags in TAG_GROUPS.items()}
    writer.add_custom_scalars(layout)


def write_hparams(logdir: str | Path, hparams: Mapping[str, Any], metrics: Mapping[str, float], run_name: str = "hparams") -> Path:
    """Record a run's settings and its final metrics for TensorBoard's HParams dashboard.

    :param logdir: the run's TensorBoard folder.
    :param hparams: setting name -> value; anything but a bool, int, float or str is written as its ``str``.
    :param metrics: metric name -> final value (e.g. the learned policy's mean dev score).
    :param run_name: the sub-folder the HParams record goes to.
    :return: the sub-folder.
    """
    from torch.utils.tensorboard import SummaryWriter

    clean = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in hparams.items()}
    with SummaryWriter(str(logdir)) as writer:
        writer.add_hparams(clean, {k: float(v) for k, v in metrics.items()}, run_name=run_name)
    return Path(logdir) / run_name


def log_epoch_scalars(writer: Any, step: int, stats: EpochStats, evals: Mapping[str, EvalStats], plan: Mapping[str, Any],
                      names: tuple[str, ...]) -> None:
    """Write one epoch's training and evaluation scalars (:data:`TAG_GROUPS`) to a ``SummaryWriter``.

    :param step: the x-axis value (epoch index, or global decision index).
    :param plan: the applied plan (``EpochPlan.to_dict()``).
    :param names: teacher names, for the per-teacher scalars.
    """
    write_scalars(writer, step_scalars(plan, stats.to_dict(), names), step)
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


def _plan_summary(plan: Mapping[str, Any], teachers: Sequence[str]) -> str:
    """One line for a plan's ``to_dict()``: teachers, data, objective."""
    if float(plan.get("kd_weight", 1.0)) == 0.0 and float(plan.get("hidden_weight", 0.0)) == 0.0:
        who = "no KD (cross-entropy only)"
    elif plan.get("teacher_mode", "fixed") != "fixed":
        who = f"teachers mixed by the student's uncertainty ({plan['teacher_mode']})"
    else:
        weights = plan.get("teacher_weights")
        if weights is None:
            who = "the teachers' mean"
        else:
            who = " + ".join(f"{w:g}×{t}" for w, t in zip(weights, teachers) if w) or "no teacher"
    fraction = float(plan.get("fraction", 1.0))
    data = "all data" if fraction >= 1.0 else (
        f"{100 * fraction:g}% of each {plan.get('scope', 'epoch')} by {plan.get('selection', 'entropy')}"
        + (" (stale scores)" if plan.get("scoring") == "stale" else "")
    )
    extra = f", hidden alignment {plan['hidden_weight']:g}" if float(plan.get("hidden_weight", 0.0)) else ""
    objective = ", uncertainty-weighted objective" if plan.get("objective", "static") != "static" else ""
    return f"{who}; {data}{extra}{objective}"


def model_card(
    *, task: str, label_names: Sequence[str] | None, student: str, teachers: Sequence[str],
    teacher_scores: Sequence[float] | None, schedule: Sequence[Mapping[str, Any]], metrics: Mapping[str, Any],
    how: str, config: Mapping[str, Any] | None = None,
) -> str:
    """A Hugging Face model card (Markdown with YAML front matter) for an exported student.

    :param task: the task's name.
    :param label_names: class names in id order (None for regression).
    :param student: the student's source (preset, folder or hub id).
    :param teachers: the teachers' names, smallest first.
    :param teacher_scores: each teacher's dev score (None = not measured).
    :param schedule: the plans applied, one per decision, as ``EpochPlan.to_dict()``.
    :param metrics: the student's final metrics (dev, ctrl, compute, ...).
    :param how: how it was made (what produced the schedule).
    :param config: the run's config, appended as YAML-ish JSON for reproduction.
    """
    front = ["---", "library_name: transformers", "pipeline_tag: text-classification",
             "tags: [knowledge-distillation, dynakd]", "---"]
    lines = [*front, "", f"# DynaKD student for {task}", "",
             f"A `{student}` student distilled with DynaKD on **{task}** "
             f"({'labels: ' + ', '.join(f'`{n}`' for n in label_names) if label_names else 'regression'}). {how}", "",
             "## Teachers", "", "| teacher | dev score |", "|---|---|"]
    for i, name in enumerate(teachers):
        score = teacher_scores[i] if teacher_scores is not None and i < len(teacher_scores) else None
        lines.append(f"| `{name}` | {'' if score is None else f'{100 * score:.1f}'} |")
    lines += ["", "## Schedule applied", "", "| decision | plan |", "|---|---|"]
    lines += [f"| {i + 1} | {_plan_summary(p, teachers)} |" for i, p in enumerate(schedule)]
    lines += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", "## How it was made", "", "```bash", " ".join(shlex.quote(a) for a in ["python", *sys.argv]), "```", ""]
    if config is not None:
        lines += ["Resolved configuration:", "", "```json", json.dumps(config, indent=1, default=str), "```", ""]
    lines += ["## Use", "", "```python", "from transformers import pipeline",
              "classifier = pipeline(\"text-classification\", model=\"PATH/TO/THIS/FOLDER\")",
              "classifier(\"a sentence\")", "```", ""]
    return "\n".join(lines)
