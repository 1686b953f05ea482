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

from __future__ import annotations

import dataclasses

import workflow
from workflow import LearnConfig


def main(cfg: LearnConfig) -> list[dict]:
    workflow.configure_threads(cfg.threads, cfg.env.backend)
    # Bad input fails here, before teachers are trained or data is encoded.
    spaces = workflow.expected_spaces(cfg.env)
    workflow.check_algorithm(cfg.algo, spaces)
    if cfg.vec_env == "ray":
        from agents.ray_vec_env import require_ray

        require_ray()  # without the extra: its install command, before any work
    baselines = workflow.build_controllers(cfg.baselines, cfg.env, spaces, seed=cfg.agent_seed)
    run_dir = workflow.prepare_run_dir(cfg)
    env = workflow.build_env(cfg.env, spaces)  # data, teachers and student checked before anything is written
    workflow.claim_run_dir(cfg)
    workflow.save_config(run_dir / workflow.CONFIG_FILE, dataclasses.replace(cfg, resume=None, overwrite=False))

    show = cfg.env.backend.progress
    agent, done = workflow.make_learner(cfg, env, run_dir)
    learned = f"learned-{cfg.algo}"
    with workflow.resumable(cfg, run_dir):  # Ctrl-C: where the run stands and the --resume command, exit 130
        try:
            workflow.learn(agent, cfg, run_dir, done, show)
        finally:
            agent.get_env().close()  # subprocesses / Ray actors of a vector env (the driver's env stays)
        agent.save(run_dir / "policy.zip")
        records = workflow.evaluate(env, {learned: agent, **baselines}, cfg.eval_seeds, show)
    best = workflow.save_best_schedule(run_dir / "best_schedule.json", records, learned, run=str(run_dir))
    title = f"{cfg.name}: {env.distiller.spec.name}, {cfg.total_episodes} episodes of {cfg.algo}"
    rows = workflow.write_comparison(run_dir, records, title=title)

    print(f"\n{workflow.format_table(rows, title=f'{title} — evaluation on seeds {list(cfg.eval_seeds)}')}")
    print(f"\nbest learned schedule (seed {best.seed}, chosen by ctrl score):")
    print(workflow.describe_schedule(best, cfg.env, spaces))
    print(f"\nwrote {run_dir}/: policy.zip best_schedule.json comparison.csv comparison.png episodes.jsonl")
    print(f"replay: python experiments/replay_schedule.py --config {run_dir}/config.yaml --policy {run_dir}/policy.zip")
    print("inspect: tensorboard --logdir runs")
    return rows


if __name__ == "__main__":
    workflow.cli(main, LearnConfig, __doc__)
