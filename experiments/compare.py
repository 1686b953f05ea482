"""Run controllers — baselines, learned policies, recorded schedules — over the same seeds, and
write the table and the plot.

    python experiments/compare.py --controllers kd-t1 paper-combined runs/default/policy.zip \
        runs/default/best_schedule.json --seeds 1 2 3 4 5 --out runs/compare
    python experiments/compare.py --config experiments/configs/sst2_cpu.yaml --controllers kd-t0 kd-t1 random

Writes ``OUT/``: ``comparison.csv`` (one row per controller), ``comparison.png`` (dev score vs
compute), ``evaluation.jsonl`` (every episode: plans, stats, scores) and ``config.yaml``.
"""

from __future__ import annotations

from pathlib import Path

import workflow
from kd_backend.locking import check_folder, claim_folder
from workflow import CompareConfig


def main(cfg: CompareConfig) -> list[dict]:
    workflow.configure_threads(cfg.threads, cfg.env.backend)
    spaces = workflow.expected_spaces(cfg.env)
    controllers = workflow.build_controllers(cfg.controllers, cfg.env, spaces)  # all checked before any work
    out = Path(cfg.out)
    check_folder(out, overwrite=cfg.overwrite)  # refused before any work, written only once all is built
    env = workflow.build_env(cfg.env, spaces)
    claim_folder(out, overwrite=cfg.overwrite)
    workflow.save_config(out / workflow.CONFIG_FILE, cfg)
    records = workflow.evaluate(env, controllers, cfg.seeds, cfg.env.backend.progress)
    title = f"{env.distiller.spec.name}: {len(controllers)} controllers x {len(cfg.seeds)} seeds"
    rows = workflow.write_comparison(out, records, title=title)
    print(f"\n{workflow.format_table(rows, title=title)}")
    print(f"\nwrote {out}/: comparison.csv comparison.png evaluation.jsonl")
    return rows


if __name__ == "__main__":
    workflow.cli(main, CompareConfig, __doc__)
