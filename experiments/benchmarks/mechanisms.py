"""Dev accuracy of the paper's mechanisms against no-KD and static KD over seeds, and how well ctrl ranks them.

    python experiments/benchmarks/mechanisms.py --config experiments/configs/sst2_minilm_cpu.yaml \
        --seeds 0 1 2 --out runs/bench/mechanisms-tiny

Teachers given as presets are fine-tuned on the task on first use (cached). Every row trains the
same student from the same seeds on the same data; only the plan differs. Each row reports dev
(mean ± sd over seeds), the ``ctrl`` score the controller would see, and the compute.

**ctrl vs dev.** When ``train_limit`` leaves training rows unused, the benchmark also scores every
run on a *random* hold-out of those rows (what ``ctrl_rule=random`` would have held out) and
reports the Spearman rank correlation, over all runs, of dev with the configured ctrl and with the
random one, and each one's mean gap to dev. Prints a markdown table, writes ``OUT/mechanisms.json``.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated

import numpy as np
import tyro
import yaml
from _bench import print_table, set_threads, write_json  # noqa: I001
from scipy.stats import spearmanr

from agents.cli import overlay_config, run_main
from kd_backend.data import TaskData, load_task, select_ctrl
from kd_backend.distiller import Distiller
from kd_backend.pipeline import (
    BackendConfig,
    build_distiller,
    build_student,
    load_task_data,
)
from kd_backend.plan import EpochPlan


@dataclass(frozen=True)
class Args:
    backend: Annotated[BackendConfig, tyro.conf.arg(name="")] = BackendConfig()
    config: str | None = None
    """A learn_policy YAML config whose ``env.backend`` supplies the defaults (flags override it)."""
    seeds: tuple[int, ...] = (0,)
    """Student seeds; each row reports mean ± sd over them."""
    rows: tuple[str, ...] = ()
    """Only the rows whose printed name starts with one of these; empty = all."""
    out: str = "runs/bench/mechanisms"
    """Output folder."""
    threads: int = 1
    """torch intra-op threads (1 is fastest for tiny models on a 2-core machine)."""
    quick: bool = False
    """Smoke-test size (tiny synthetic data; for the test suite)."""


def plans(teachers: tuple[str, ...]) -> dict[str, EpochPlan]:
    """The rows: no KD, static KD from each teacher, then each mechanism of the paper alone.

    Selection and objective rows learn from the largest teacher alone when there are several
    (mixing in a bad teacher would confound them); adoption rows mix all teachers.
    """
    n = len(teachers)
    best = tuple(float(i == n - 1) for i in range(n))
    rows = {"no KD (fine-tuning)": EpochPlan(kd_weight=0.0)}
    # (the benchmark's --freeze-embeddings applies to every row, this one included)
    for k, name in enumerate(teachers):
        rows[f"static KD from {name}"] = EpochPlan(teacher_weights=tuple(float(i == k) for i in range(n)))
    if n > 1:
        rows["static KD, teachers' mean"] = EpochPlan()
        for mode in ("hard", "soft", "soft-instance"):
            rows[f"(1) adoption: {mode}"] = EpochPlan(teacher_mode=mode)
    largest = f" (teacher {teachers[-1]})" if n > 1 else ""
    for rule in ("margin", "entropy", "random"):
        rows[f"(2) batch scope: KD on 10% by {rule}{largest}"] = EpochPlan(
            teacher_weights=best, fraction=0.1, scope="batch", selection=rule)
    rows[f"(2) batch scope: 10% by margin, averaged over the batch{largest}"] = EpochPlan(
        teacher_weights=best, fraction=0.1, scope="batch", selection="margin", selection_norm="batch")
    for rule in ("entropy", "random"):
        rows[f"(2) epoch scope: train on 30% by {rule}{largest}"] = EpochPlan(
            teacher_weights=best, fraction=0.3, scope="epoch", selection=rule)
    rows[f"(3) objective: static KD + hidden{largest}"] = EpochPlan(teacher_weights=best, hidden_weight=1.0)
    rows[f"(3) objective: uncertainty{largest}"] = EpochPlan(teacher_weights=best, hidden_weight=1.0,
                                                             objective="uncertainty")
    return rows


def random_ctrl(cfg: BackendConfig, task: TaskData) -> TaskData | None:
    """The task with ``ctrl`` replaced by a random hold-out of training rows the run does not use."""
    if cfg.train_limit is None:
        return None
    full = load_task(cfg.task, cfg.data_dir, ctrl_fraction=cfg.ctrl_fraction, ctrl_max=cfg.ctrl_max,
                     ctrl_rule=cfg.ctrl_rule, seed=cfg.data_seed)
    used = set(task.train.text_a) | set(task.ctrl.text_a)
    unused = np.array([i for i, t in enumerate(full.train.text_a) if t not in used])
    if len(unused) < len(task.ctrl):
        return None
    pick = unused[select_ctrl(full.train.select(unused), task.dev, len(task.ctrl), "random",
                              np.random.default_rng([cfg.data_seed, 7]))]
    return replace(task, ctrl=full.train.select(np.sort(pick)))


def main(args: Args) -> list[dict]:
    set_threads(args.threads)
    cfg = args.backend
    if args.quick:
        cfg = replace(cfg, task="synthetic", synthetic_train=300, synthetic_dev=100, teachers=("tiny-1x64",),
                      teacher_epochs=1, epochs=1, progress=False, max_seq_length=48, train_limit=150)
    task = load_task_data(cfg)
    distiller = build_distiller(cfg, task)
    names = distiller.teacher_names
    other = random_ctrl(cfg, task)
    if other is not None:  # scores a trained student on the random hold-out (no teachers needed)
        factory, tok = build_student(cfg, task)
        scorer = Distiller(other, factory, tok, teachers=(), config=cfg.distiller_config())
    dev_eval = distiller.evaluate("dev")
    ctrl_eval = distiller.evaluate("ctrl")
    results = [{"row": f"teacher: {n}", "dev": 100 * dev_eval.teacher_scores[k], "ctrl": 100 * ctrl_eval.teacher_scores[k]}
               for k, n in enumerate(names)]
    runs = []
    for row, plan in plans(names).items():
        if args.rows and not any(row.startswith(prefix) for prefix in args.rows):
            continue
        dev, ctrl, rnd, compute, t0 = [], [], [], [], time.perf_counter()
        for seed in args.seeds:
            distiller.reset(seed)
            flops = sum(st.student_flops + st.teacher_flops for st in (distiller.train_epoch(plan) for _ in range(cfg.epochs)))
            compute.append(flops / distiller.full_epoch_flops)
            dev.append(100 * distiller.evaluate("dev").score)
            ctrl.append(100 * distiller.evaluate("ctrl").score)
            if other is not None:
                scorer.reset(seed)
                scorer.student.load_state_dict(distiller.student.state_dict())
                rnd.append(100 * scorer.evaluate("ctrl").score)
            runs.append({"row": row, "seed": seed, "dev": dev[-1], "ctrl": ctrl[-1], "random ctrl": rnd[-1] if rnd else None})
        sd = float(np.std(dev, ddof=1)) if len(dev) > 1 else 0.0
        results.append({"row": row, "dev": float(np.mean(dev)), "sd": sd, "ctrl": float(np.mean(ctrl)),
                        "random ctrl": float(np.mean(rnd)) if rnd else "", "compute": float(np.mean(compute)),
                        "seconds": (time.perf_counter() - t0) / len(args.seeds), "plan": plan.to_dict()})
        r = results[-1]
        print(f"{row}: dev {r['dev']:.1f} ± {r['sd']:.1f} (sd), ctrl {r['ctrl']:.1f}, compute {r['compute']:.2f}",
              flush=True)
    title = f"{task.spec.name}: student {cfg.student}, {cfg.epochs} epochs, seeds {list(args.seeds)}"
    print_table(results, ["row", "dev", "sd", "ctrl", "random ctrl", "compute", "seconds"], title=title)
    agreement = {}
    if len(runs) > 2:
        d = np.array([r["dev"] for r in runs])
        for key in ("ctrl", "random ctrl"):
            if runs[0][key] is None:
                continue
            c = np.array([r[key] for r in runs])
            agreement[key] = {"spearman vs dev": float(spearmanr(c, d).statistic), "mean gap to dev": float((c - d).mean())}
        print_table([{"split": k, **v} for k, v in agreement.items()], ["split", "spearman vs dev", "mean gap to dev"],
                    title=f"ctrl rule {cfg.ctrl_rule!r} vs a random hold-out, over {len(runs)} runs")
    write_json(Path(args.out) / "mechanisms.json", {"config": cfg, "rows": results, "runs": runs, "agreement": agreement})
    return results


def parse(argv: list[str] | None = None) -> Args:
    """Flags over the ``env.backend`` of ``--config FILE`` (if given) over the defaults."""
    argv = list(sys.argv[1:] if argv is None else argv)
    default = Args()
    if "--config" in argv:
        path = argv[argv.index("--config") + 1]
        data = yaml.safe_load(Path(path).read_text())["env"]["backend"]
        default = Args(backend=replace(overlay_config(BackendConfig, data, path), progress=False), config=path)
    return tyro.cli(Args, args=argv, default=default)


if __name__ == "__main__":
    run_main(main, parse)
