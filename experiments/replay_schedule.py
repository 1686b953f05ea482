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

from __future__ import annotations

import workflow
from agents import ScheduleController
from kd_backend.io import atomic_write_json
from kd_backend.locking import check_folder, claim_folder
from kd_backend.pipeline import config_dict
from kd_backend.reporting import model_card
from workflow import ReplayConfig


def main(cfg: ReplayConfig) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    source = cfg.source  # exactly one of --policy / --schedule
    workflow.configure_threads(cfg.threads, cfg.env.backend)
    # A missing file, a malformed schedule or a policy that does not fit the env fails here, before any work.
    spaces = workflow.expected_spaces(cfg.env)
    if cfg.policy is not None:
        controller = workflow.load_policy(cfg.policy, spaces)
    else:
        controller = workflow.load_schedule(cfg.schedule, cfg.env, spaces)
    out = cfg.out_dir
    check_folder(out, overwrite=cfg.overwrite)  # refused before any work, written only once all is built
    env = workflow.build_env(cfg.env, spaces)
    claim_folder(out, overwrite=cfg.overwrite)
    workflow.save_config(out / workflow.CONFIG_FILE, cfg)
    seed = cfg.env.backend.seed
    [record] = workflow.evaluate(env, {controller.name: controller}, [seed], cfg.env.backend.progress)
    dev = env.distiller.evaluate("dev")  # the same student the episode ended with: report only

    ScheduleController(record.schedule).save(
        out / "schedule.json", source=source, mode="closed loop" if cfg.policy else "open loop", seed=seed,
        task=env.distiller.spec.name, teachers=list(env.teacher_names),
    )
    spec = env.distiller.spec
    card = model_card(
        task=spec.name, label_names=spec.label_names, student=cfg.env.backend.student, teachers=env.teacher_names,
        teacher_scores=list(dev.teacher_scores), schedule=record.schedule,
        metrics={"dev score": dev.score, **{f"dev {k}": v for k, v in dev.metrics.items()},
                 "ctrl score": record.final_ctrl_score, "compute (plain epochs)": record.total_compute},
        how=f"Its schedule was chosen by {source} ({'closed loop: the policy decided each epoch from the student' if cfg.policy else 'open loop: a recorded schedule'}), replayed with seed {seed} (experiments/replay_schedule.py).",
        config=config_dict(cfg.env),
    )
    env.distiller.export_student(out / "student", card=card)
    writer = SummaryWriter(str(out))
    workflow.log_episode_scalars(writer, record, env.teacher_names)
    writer.close()
    metrics = {
        "source": source, "mode": "closed loop" if cfg.policy else "open loop", "seed": seed,
        "task": env.distiller.spec.name, "teachers": list(env.teacher_names), "student": cfg.env.backend.student,
        "steps": [s.__dict__ for s in record.steps],
        "final_ctrl_score": record.final_ctrl_score, "final_ctrl": env.ctrl.to_dict(),
        "final_dev_score": dev.score, "final_dev": dict(dev.metrics), "dev": dev.to_dict(),
        "total_compute": record.total_compute, "episode_return": record.episode_return,
        "wall_time": record.wall_time,
    }
    atomic_write_json(out / "metrics.json", metrics)

    print(f"\nreplayed {source} ({metrics['mode']}) on {metrics['task']}, seed {seed}:")
    print(workflow.describe_schedule(record, cfg.env, spaces))
    print(f"final ctrl {100 * record.final_ctrl_score:.1f}  dev {dict(dev.metrics)}  "
          f"compute {record.total_compute:.2f}")
    print(f"wrote {out}/: schedule.json metrics.json student/ (and TensorBoard events)")
    return metrics


if __name__ == "__main__":
    workflow.cli(main, ReplayConfig, __doc__)
