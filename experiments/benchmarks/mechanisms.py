"""Dev accuracy of the paper's mechanisms against no-KD and static KD, one table.

    python experiments/benchmarks/mechanisms.py --task glue/sst2 --data-dir ../shared/data/glue \
        --teachers tiny-2x128 tiny-4x256 --student tiny-1x64 --epochs 2 --out runs/bench/mechanisms

Teachers given as presets are fine-tuned on the task on first use (cached). Every row trains the
same student from the same seed on the same data; only the plan differs. Prints a markdown table
and writes ``OUT/mechanisms.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import tyro

from _bench import print_table, set_threads, write_json  # noqa: I001
from kd_backend.pipeline import BackendConfig, build_distiller, build_student, fine_tune, load_task_data
from kd_backend.plan import EpochPlan


@dataclass(frozen=True)
class Args:
    backend: Annotated[BackendConfig, tyro.conf.arg(name="")] = BackendConfig()
    seeds: tuple[int, ...] = (0,)
    """Student seeds; each row reports the mean dev score over them."""
    out: str = "runs/bench/mechanisms"
    """Output folder."""
    threads: int = 1
    """torch intra-op threads (1 is fastest for tiny models on a 2-core machine)."""
    quick: bool = False
    """Smoke-test size (tiny synthetic data; for the test suite)."""


def plans(num_teachers: int) -> dict[str, EpochPlan]:
    """The rows: static KD from each teacher, then each mechanism of the paper alone."""
    rows = {}
    for k in range(num_teachers):
        rows[f"static KD, teacher {k + 1}"] = EpochPlan(teacher_weights=tuple(float(i == k) for i in range(num_teachers)))
    rows["static KD, teachers' mean"] = EpochPlan()
    rows["(1) adoption: hard"] = EpochPlan(teacher_mode="hard")
    rows["(1) adoption: soft"] = EpochPlan(teacher_mode="soft")
    rows["(1) adoption: soft-instance"] = EpochPlan(teacher_mode="soft-instance")
    rows["(2) selection: entropy 10%, batch (paper)"] = EpochPlan(fraction=0.1, scope="batch")
    rows["(2) selection: margin 10%, epoch (ours)"] = EpochPlan(fraction=0.1, scope="epoch", selection="margin")
    rows["(3) objective: static KD+hidden"] = EpochPlan(hidden_weight=1.0)
    rows["(3) objective: uncertainty"] = EpochPlan(hidden_weight=1.0, objective="uncertainty")
    return rows


def main(args: Args) -> list[dict]:
    set_threads(args.threads)
    cfg = args.backend
    if args.quick:
        cfg = replace(cfg, task="synthetic", synthetic_train=300, synthetic_dev=100, teachers=("tiny-1x64",) * 1,
                      teacher_epochs=1, epochs=1, progress=False, max_seq_length=48)
    task = load_task_data(cfg)
    distiller = build_distiller(cfg, task)
    names = distiller.teacher_names
    results = [{"row": f"teacher {k + 1}: {n}", "dev": distiller.evaluate("dev").teacher_scores[k], "seconds": 0.0}
               for k, n in enumerate(names)]
    factory, tok = build_student(cfg, task, [])
    scores, t0 = [], time.perf_counter()
    for seed in args.seeds:
        _, evals = fine_tune(task, factory, tok, replace(cfg.distiller_config(), seed=seed))
        scores.append(evals[-1].score)
    results.append({"row": "no KD (fine-tuning)", "dev": sum(scores) / len(scores), "seconds": time.perf_counter() - t0})
    for row, plan in plans(len(names)).items():
        scores, t0 = [], time.perf_counter()
        for seed in args.seeds:
            distiller.reset(seed)
            for _ in range(cfg.epochs):
                distiller.train_epoch(plan)
            scores.append(distiller.evaluate("dev").score)
        results.append({"row": row, "dev": sum(scores) / len(scores), "seconds": time.perf_counter() - t0,
                        "plan": plan.to_dict()})
    print_table(results, ["row", "dev", "seconds"], title=f"{task.spec.name}: student {cfg.student}, "
                f"{cfg.epochs} epochs, seeds {list(args.seeds)}")
    write_json(Path(args.out) / "mechanisms.json", {"config": cfg, "rows": results})
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
