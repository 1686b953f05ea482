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

from agents.cli import cli
from agents.configs import CompareConfig
from agents.workflows import compare

if __name__ == "__main__":
    cli(compare, CompareConfig, __doc__)
