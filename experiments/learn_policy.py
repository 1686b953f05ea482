"""Learn a KD schedule — which teacher, how much data, which objective weights, epoch by epoch —
from the student's own progress on the ctrl split, then compare it with baselines on fresh seeds.

    python experiments/learn_policy.py                     # the embedded default: synthetic task, CPU
    python experiments/learn_policy.py --config experiments/configs/sst2_cpu.yaml
    python experiments/learn_policy.py --resume runs/default --total-episodes 96   # continue / extend
    python experiments/learn_policy.py --vec-env ray --n-envs 8 --ray-address auto  # 8 envs on a Ray cluster
    tensorboard --logdir runs

Writes ``runs/<name>/``: ``config.yaml`` (resolved), ``policy.zip``, ``episodes.jsonl`` (every
learning step), ``checkpoints/``, ``best_schedule.json``, ``comparison.csv``, ``comparison.png``
(dev score vs compute per controller), ``evaluation.jsonl`` and TensorBoard events.
"""

from agents.cli import cli
from agents.configs import LearnConfig
from agents.workflows import learn_policy

if __name__ == "__main__":
    cli(learn_policy, LearnConfig, __doc__)
