"""Population-Based Training (Ray Tune) over the plan knobs: a non-RL baseline for the learned controller.

    python experiments/pbt_schedule.py --population 4 --out runs/pbt            # local Ray, the default env
    python experiments/pbt_schedule.py --config experiments/configs/sst2_cpu.yaml --ray-address auto
    python experiments/replay_schedule.py --schedule runs/pbt/pbt_schedule.json --seed 7
    python experiments/compare.py --controllers kd-t1 runs/pbt/pbt_schedule.json runs/default/policy.zip

Each trial is one KD run (student seed ``--seed``); every ``--perturbation-interval`` decisions
PBT copies the run state of better trials into worse ones and perturbs their knobs (teacher,
data fraction, selection rule, KD and hidden weights). Writes ``OUT/``: ``pbt_schedule.json``
(the best trial's applied plans, by final ctrl score, with PBT's total compute), ``pbt_trials.json``
(every trial), ``config.yaml`` and Tune's folder ``tune/``. Needs ``pip install -e ".[ray]"``.
"""

from agents.cli import cli
from agents.configs import PBTConfig
from agents.workflows import pbt_schedule

if __name__ == "__main__":
    cli(pbt_schedule, PBTConfig, __doc__)
