"""Evaluating controllers over the same seeds and reporting it: the table, the plot, the CSV and
JSONL files, the best learned schedule (chosen by ctrl) and TensorBoard scalars of an episode."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agents.baselines import EpisodeRecord, ScheduleController, evaluate_controller
from envs import DistillationEnv
from kd_backend.errors import ConfigError
from kd_backend.io import save_figure
from kd_backend.reporting import (
    episode_scalars,
    step_scalars,
    write_layout,
    write_scalars,
)


def evaluate(
    env: DistillationEnv, controllers: Mapping[str, Any], seeds: Sequence[int], show_progress: bool = True
) -> list[EpisodeRecord]:
    """One episode per controller and seed, all through :func:`agents.evaluate_controller`."""
    from tqdm.auto import tqdm

    records: list[EpisodeRecord] = []
    with tqdm(total=len(controllers) * len(seeds), desc="evaluating", unit="episode", disable=not show_progress,
              dynamic_ncols=True) as bar:
        for name, controller in controllers.items():
            for seed in seeds:
                bar.set_postfix_str(f"{name} seed {seed}")
                records.extend(evaluate_controller(env, controller, [seed], deterministic=True, name=name))
                bar.update(1)
    return records


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarize(records: Sequence[EpisodeRecord]) -> list[dict[str, Any]]:
    """One row per controller (in first-seen order): means and standard deviations over its seeds."""
    groups: dict[str, list[EpisodeRecord]] = {}
    for r in records:
        groups.setdefault(r.controller, []).append(r)
    rows = []
    for name, group in groups.items():
        dev, dev_sd = _mean_std([r.final_dev_score for r in group])
        ctrl, ctrl_sd = _mean_std([r.final_ctrl_score for r in group])
        compute, compute_sd = _mean_std([r.total_compute for r in group])
        rows.append({
            "controller": name, "episodes": len(group), "seeds": " ".join(str(r.seed) for r in group),
            "dev_score": dev, "dev_score_std": dev_sd, "ctrl_score": ctrl, "ctrl_score_std": ctrl_sd,
            "compute": compute, "compute_std": compute_sd,
            "return": _mean_std([r.episode_return for r in group])[0],
            "seconds_per_episode": _mean_std([r.wall_time for r in group])[0],
        })
    return rows


def format_table(rows: Sequence[Mapping[str, Any]], title: str = "") -> str:
    """The comparison as an aligned text table (scores in metric points, compute in plain epochs)."""
    header = ("controller", "dev score", "ctrl score", "compute", "return", "s/episode")
    lines = [
        (
            str(r["controller"]),
            f"{100 * r['dev_score']:.1f} ± {100 * r['dev_score_std']:.1f}",
            f"{100 * r['ctrl_score']:.1f} ± {100 * r['ctrl_score_std']:.1f}",
            f"{r['compute']:.2f}",
            f"{r['return']:+.1f}",
            f"{r['seconds_per_episode']:.1f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    out = [title] if title else []
    out += [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    out.append("scores in points (mean ± sd over seeds); compute in plain full-data epochs of the student (one "
               "epoch over every training row, unlabelled transfer rows included: CE-only plans skip those, so "
               "they cost less than 1 per epoch where the task has them)")
    return "\n".join(out)


def plot_comparison(records: Sequence[EpisodeRecord], path: str | Path, title: str = "") -> Path:
    """Dev score against compute: each episode as a faint dot, each controller's mean ± sd as a marker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    use_dev = all(r.final_dev_score is not None for r in records)
    fig = Figure(figsize=(8, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(64)]
    markers = "osD^v<>phX*"
    groups: dict[str, list[EpisodeRecord]] = {}
    for r in records:
        groups.setdefault(r.controller, []).append(r)
    for i, (name, group) in enumerate(groups.items()):
        x = np.array([r.total_compute for r in group])
        y = 100 * np.array([r.final_dev_score if use_dev else r.final_ctrl_score for r in group], dtype=np.float64)
        ax.scatter(x, y, color=colors[i], alpha=0.3, s=18, linewidths=0)
        ddof = 1 if len(group) > 1 else 0  # the table's sample standard deviation
        ax.errorbar(  # hollow markers, so that controllers on the same spot stay visible
            x.mean(), y.mean(), xerr=x.std(ddof=ddof), yerr=y.std(ddof=ddof), color=colors[i],
            marker=markers[i % len(markers)], markersize=11 - min(i, 5), markerfacecolor="none",
            markeredgewidth=2, capsize=3, linestyle="none", label=f"{name} (n={len(group)})", zorder=3,
        )
    ax.set_xlabel("compute per KD run (plain full-data epochs of the student)")
    ax.set_ylabel(f"final {'dev' if use_dev else 'ctrl'} score (points)")
    ax.set_title(title or "KD schedules: score vs compute")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return save_figure(fig, path)


def write_comparison(out_dir: str | Path, records: Sequence[EpisodeRecord], title: str = "") -> list[dict[str, Any]]:
    """Write ``comparison.csv`` (one row per controller), ``comparison.png`` and ``evaluation.jsonl``
    (every evaluated episode with its plans and stats); returns the rows."""
    from kd_backend.io import atomic_write_text

    out_dir = Path(out_dir)
    rows = summarize(records)
    tmp = out_dir / "comparison.csv.tmp"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out_dir / "comparison.csv")
    atomic_write_text(out_dir / "evaluation.jsonl", "".join(json.dumps(r.to_dict()) + "\n" for r in records))
    plot_comparison(records, out_dir / "comparison.png", title)
    return rows


def save_best_schedule(
    path: str | Path, records: Sequence[EpisodeRecord], controller: str, **metadata: Any
) -> EpisodeRecord:
    """Save the applied plans of ``controller``'s evaluation episode with the best *ctrl* score.

    The dev split is for reporting only, so it never chooses the schedule.
    """
    own = [r for r in records if r.controller == controller]
    if not own:
        raise ConfigError(f"no evaluation episode of controller {controller!r} to take a schedule from")
    best = max(own, key=lambda r: r.final_ctrl_score)
    ScheduleController(best.schedule).save(
        path, controller=controller, seed=best.seed, chosen_by="final_ctrl_score",
        final_ctrl_score=best.final_ctrl_score, final_dev_score=best.final_dev_score,
        total_compute=best.total_compute, **metadata,
    )
    return best


def log_episode_scalars(writer: Any, record: EpisodeRecord, teacher_names: Sequence[str]) -> None:
    """An evaluated episode as TensorBoard scalars of :data:`kd_backend.reporting.TAG_GROUPS` (x =
    decision): ``step/*``, ``plan/*``, ``train/*`` per decision, ``episode/*`` at the last one."""
    write_layout(writer)
    for s in record.steps:
        scalars = {"step/ctrl_score": s.ctrl_score, "step/reward": s.reward, "step/compute": s.compute,
                   **step_scalars(s.plan, s.stats, teacher_names)}
        write_scalars(writer, scalars, s.step)
    last = record.steps[-1].step if record.steps else 0
    write_scalars(writer, episode_scalars(record.final_ctrl_score, record.final_dev_score, record.total_compute,
                                          record.episode_return), last)
