"""Benchmark 2 — what a data fraction r costs: epoch time at r = 1, 0.5, 0.3, 0.1, as a ratio to r = 1.

    python experiments/benchmarks/fraction_cost.py --task glue/sst2 --data-dir ../shared/data/glue \
        --train-limit 10000 --teachers tiny-4x256 --student tiny-2x128

DynaKD's epoch scope (score the pool once without gradient, train on the top-r) next to the
paper's batch scope (the student trains on every batch; only the KD term and, online, the teacher
forward are restricted to the top-r). Target for epoch scope: ratio <= r + 0.15. Each timed epoch
starts from the same student state, and the r = 1 epoch is timed before and after the others
(their mean is the reference) so that drift in machine speed shows up.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import tyro
from _bench import print_table, set_threads, write_json  # noqa: I001

from agents.cli import cli
from kd_backend.config import BackendConfig
from kd_backend.pipeline import build_distiller
from kd_backend.plan import EpochPlan


@dataclass(frozen=True)
class Args:
    backend: Annotated[BackendConfig, tyro.conf.arg(name="")] = BackendConfig(
        task="glue/sst2", data_dir="../shared/data/glue", train_limit=10000, teachers=("tiny-4x256",),
        student="tiny-2x128", teacher_epochs=2, progress=False,
    )
    fractions: tuple[float, ...] = (1.0, 0.5, 0.3, 0.1)
    """Fractions to time."""
    selection: str = "entropy"
    """Selection rule."""
    threads: int = 1
    """torch intra-op threads."""
    out: str = "runs/bench/fraction_cost"
    """Output folder (fraction_cost.json)."""
    quick: bool = False
    """Smoke-test size (for the test suite)."""


def run(args: Args) -> list[dict]:
    set_threads(args.threads)
    cfg = args.backend
    if args.quick:
        cfg = replace(cfg, task="synthetic", data_dir=None, train_limit=None, synthetic_train=300, synthetic_dev=60,
                      teachers=("tiny-1x64",), student="tiny-1x64", teacher_epochs=1, max_seq_length=48)
    distiller = build_distiller(cfg)
    distiller.save_checkpoint(Path(args.out) / "start")

    def timed(plan: EpochPlan) -> float:
        distiller.load_checkpoint(Path(args.out) / "start")  # same student state for every row
        return distiller.train_epoch(plan).wall_time

    full_before = timed(EpochPlan())
    rows = []
    for r in args.fractions:
        row = {"fraction": r, "target (r + 0.15)": min(1.0, r + 0.15)}
        for scope in ("epoch", "batch"):
            row[f"{scope} s"] = timed(EpochPlan(fraction=r, scope=scope, selection=args.selection))
        rows.append(row)
    full = (full_before + timed(EpochPlan())) / 2
    for row in rows:
        row["epoch-scope ratio"] = row["epoch s"] / full
        row["batch-scope ratio"] = row["batch s"] / full
        row["met"] = "yes" if row["epoch-scope ratio"] <= row["target (r + 0.15)"] else "no"
    print_table(rows, ["fraction", "epoch-scope ratio", "target (r + 0.15)", "met", "batch-scope ratio",
                       "epoch s", "batch s"],
                title=f"{distiller.spec.name}: {len(distiller.task.train)} train, student {cfg.student}, "
                f"plain epoch {full:.2f}s (before {full_before:.2f}s)")
    write_json(Path(args.out) / "fraction_cost.json", {"config": cfg, "plain_epoch_s": full, "rows": rows})
    return rows


if __name__ == "__main__":
    cli(run, Args, __doc__)
