"""Benchmark 1 — DynaKD's fast path against a paper-style KD loop, side by side in one run.

    python experiments/benchmarks/backend_vs_paper.py --task glue/sst2 --data-dir ../shared/data/glue \
        --train-limit 10000 --teachers tiny-2x128 tiny-4x256 --student tiny-2x128 --epochs 1

"Paper mode" is the original implementation's way: every teacher runs forward on every step,
every batch is padded to 128 tokens, fp32, and data selection is per batch (it saves only the
teacher forwards). DynaKD's fast path reads teacher outputs from the cache, pads each
length-grouped batch to its longest member, selects at epoch scope (the student trains only on the
selected instances) and uses bf16 on CUDA. The rows in between separate the two effects (cache vs
online teachers, dynamic vs static padding). Every row trains the same student from the same seed
on the same data for the same number of epochs; examples/s counts the epoch's training set per
second of training (evaluation excluded), so a selection that skips work shows up as speed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import tyro
from _bench import print_table, set_threads, write_json  # noqa: I001

from agents.cli import cli
from kd_backend.config import BackendConfig
from kd_backend.pipeline import build_distiller, load_task_data
from kd_backend.plan import EpochPlan


@dataclass(frozen=True)
class Args:
    backend: Annotated[BackendConfig, tyro.conf.arg(name="")] = BackendConfig(
        task="glue/sst2", data_dir="../shared/data/glue", train_limit=10000, teachers=("tiny-2x128", "tiny-4x256"),
        student="tiny-2x128", epochs=1, teacher_epochs=2, progress=False,
    )
    fraction: float = 0.1
    """Data fraction of the selection rows."""
    threads: int = 1
    """torch intra-op threads (1 is fastest for tiny models on a 2-core machine)."""
    out: str = "runs/bench/backend_vs_paper"
    """Output folder (backend_vs_paper.json)."""
    quick: bool = False
    """Smoke-test size: tiny synthetic data, one tiny teacher (for the test suite)."""


MODES = {  # name: (teacher_source, pad_to_max_length)
    "paper (online teachers, pad 128, fp32)": ("online", True),
    "online teachers, dynamic padding": ("online", False),
    "cached teachers, pad 128": ("cache", True),
    "DynaKD fast path (cache, dynamic padding)": ("cache", False),
}


def run(args: Args) -> list[dict]:
    set_threads(args.threads)
    cfg = args.backend
    if args.quick:
        cfg = replace(cfg, task="synthetic", data_dir=None, train_limit=None, synthetic_train=240, synthetic_dev=80,
                      teachers=("tiny-1x64",), student="tiny-1x64", teacher_epochs=1, epochs=1, max_seq_length=128)
    task = load_task_data(cfg)
    n_teachers = len(cfg.teachers)
    kd_plan = EpochPlan(teacher_mode="soft" if n_teachers > 1 else "fixed")
    rows = []
    cases = [(name, mode, kd_plan) for name, mode in MODES.items()]
    cases += [
        (f"paper: {args.fraction:.0%} selection, batch scope", MODES["paper (online teachers, pad 128, fp32)"],
         kd_plan.replace(fraction=args.fraction, scope="batch")),
        (f"DynaKD: {args.fraction:.0%} selection, epoch scope", MODES["DynaKD fast path (cache, dynamic padding)"],
         kd_plan.replace(fraction=args.fraction, scope="epoch")),
    ]
    for name, (source, pad), plan in cases:
        run_cfg = replace(cfg, teacher_source=source, pad_to_max_length=pad, bf16=not pad)
        t0 = time.perf_counter()
        distiller = build_distiller(run_cfg, task)
        setup = time.perf_counter() - t0
        train_time = 0.0
        for _ in range(cfg.epochs):
            stats = distiller.train_epoch(plan)
            train_time += stats.wall_time
        dev = distiller.evaluate("dev")
        n = len(task.train) * cfg.epochs
        rows.append({
            "mode": name, "examples/s": n / train_time, "train s": train_time, "setup s": setup,
            "teacher forwards": distiller.teacher_forwards_total, "dev": dev.score, "plan": plan.to_dict(),
        })
    base = {r["mode"]: r["examples/s"] for r in rows}
    paper = base["paper (online teachers, pad 128, fp32)"]
    for r in rows:
        r["speed-up vs paper"] = r["examples/s"] / paper
    sel_paper = rows[-2]["examples/s"]
    rows[-1]["speed-up vs paper"] = rows[-1]["examples/s"] / sel_paper
    print_table(rows, ["mode", "examples/s", "speed-up vs paper", "dev", "train s", "setup s", "teacher forwards"],
                title=f"{task.spec.name}: {len(task.train)} train, student {cfg.student}, teachers {list(cfg.teachers)}, "
                f"{cfg.epochs} epoch(s); selection rows compare with each other")
    write_json(Path(args.out) / "backend_vs_paper.json", {"config": cfg, "rows": rows})
    return rows


if __name__ == "__main__":
    cli(run, Args, __doc__)
