"""Run controllers — baselines, learned policies, recorded schedules — over the same seeds, and
write the table and the plot.

    python experiments/compare.py --controllers kd-t1 paper-combined runs/default/policy.zip \
        runs/default/best_schedule.json --seeds 1 2 3 4 5 --out runs/compare
    python experiments/compare.py --config experiments/configs/sst2_cpu.yaml --controllers kd-t0 kd-t1 random

Writes ``OUT/``: ``comparison.csv`` (one row per controller), ``comparison.png`` (dev score vs
compute), ``evaluation.jsonl`` (every episode: plans, stats, scores) and ``config.yaml``.

With ``--protocol`` (the fair comparison of ``agents.protocol``): the reference is chosen on ctrl
over ``--selection-seeds`` among every menu plan applied to every epoch and the "A first, then B"
grid; then the reference, the best static plan, the dev-chosen oracle (an upper bound), the paper
heuristics, random and ``--controllers`` run on ``--seeds`` (at least 5):

    python experiments/compare.py --protocol --controllers runs/default/policy.zip --out runs/protocol

writing ``protocol.csv`` (dev and ctrl mean ± SE, compute, paired difference to the reference,
compute ratio to the best static plan), ``selection.csv``, ``protocol.json`` (choices, seeds, the
grid search's cost), ``protocol.png`` (the dev-vs-compute frontier) and the episodes. Add a
controller (or ``--oracle``) to a finished protocol without rerunning it: ``--reuse runs/protocol``
takes every candidate and built-in controller episode it holds, and runs only the rest:

    python experiments/compare.py --protocol --reuse runs/protocol --controllers runs/default/policy.zip \
        --out runs/protocol-policy
"""

from __future__ import annotations

from pathlib import Path

import workflow
from kd_backend.locking import check_folder, claim_folder
from workflow import CompareConfig

from agents import candidate_schedules, format_protocol, menu_plans, merge_costs, run_protocol, write_protocol


def protocol(cfg: CompareConfig, spaces: workflow.Spaces, out: Path, env, prior: tuple) -> list[dict]:
    names = dict.fromkeys((*workflow.PROTOCOL_CONTROLLERS, *cfg.controllers))
    plans = menu_plans(env)
    controllers = workflow.build_controllers(list(names), cfg.env, spaces)
    candidates = candidate_schedules(plans, env.steps_per_episode, env.decisions_per_epoch, cfg.first_plans,
                                     cfg.rest_plans)
    result = run_protocol(
        env, candidates, controllers, cfg.selection_seeds, cfg.eval_seeds,
        oracle=cfg.oracle, branch_cache=cfg.protocol_branch_cache, show_progress=cfg.env.backend.progress,
        prior=prior[0], reuse_names=[n for n in names if not n.endswith((".zip", ".json"))],
    )
    if cfg.reuse is not None:
        result.costs = merge_costs(prior[1], result.costs)
    write_protocol(out, result, task=env.distiller.spec.name, reused_from=cfg.reuse)
    print(f"\n{format_protocol(result)}")
    print(f"\nwrote {out}/: protocol.csv selection.csv protocol.json protocol.png selection.jsonl evaluation.jsonl")
    return result.rows


def main(cfg: CompareConfig) -> list[dict]:
    workflow.configure_threads(cfg.threads, cfg.env.backend)
    spaces = workflow.expected_spaces(cfg.env)
    controllers = workflow.build_controllers(cfg.controllers, cfg.env, spaces)  # all checked before any work
    out = Path(cfg.out)
    check_folder(out, overwrite=cfg.overwrite)  # refused before any work, written only once all is built
    prior = workflow.read_protocol_run(cfg.reuse, cfg) if cfg.reuse is not None else ((), {})  # before out is claimed
    env = workflow.build_env(cfg.env, spaces)
    claim_folder(out, overwrite=cfg.overwrite)
    workflow.save_config(out / workflow.CONFIG_FILE, cfg)
    if cfg.protocol:
        return protocol(cfg, spaces, out, env, prior)
    records = workflow.evaluate(env, controllers, cfg.eval_seeds, cfg.env.backend.progress)
    title = f"{env.distiller.spec.name}: {len(controllers)} controllers x {len(cfg.eval_seeds)} seeds"
    rows = workflow.write_comparison(out, records, title=title)
    print(f"\n{workflow.format_table(rows, title=title)}")
    print(f"\nwrote {out}/: comparison.csv comparison.png evaluation.jsonl")
    return rows


if __name__ == "__main__":
    workflow.cli(main, CompareConfig, __doc__)
