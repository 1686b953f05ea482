"""Replay a learned policy (closed loop) or a recorded schedule (open loop) as one KD run, on any
task, seed or student, and export the distilled student.

    python experiments/replay_schedule.py --config runs/default/config.yaml --policy runs/default/policy.zip --seed 7
    python experiments/replay_schedule.py --schedule runs/default/best_schedule.json --student tiny-2x128

Writes ``OUT/``: ``schedule.json`` (the plans actually applied; ``--schedule`` replays it),
``metrics.json`` (per-step stats, final ctrl and dev metrics), ``student/`` (``save_pretrained`` with the
task's label names and a model card ``README.md``: teachers, the schedule applied, metrics, how it was
made; ``AutoModelForSequenceClassification`` and ``pipeline("text-classification")`` load it),
``config.yaml`` and TensorBoard events.
"""

from agents.cli import cli
from agents.configs import ReplayConfig
from agents.workflows import replay

if __name__ == "__main__":
    cli(replay, ReplayConfig, __doc__)
