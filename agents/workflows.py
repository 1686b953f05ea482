"""The jobs behind the scripts, as functions of their config (:mod:`agents.configs`): each is what
its script runs, and what a user's own code calls after ``pip install``.

* :func:`learn_policy` (``learn_policy.py``) — learn with an SB3 agent, then compare on fresh seeds;
* :func:`replay` (``replay_schedule.py``) — one KD run of a policy or schedule, the student exported;
* :func:`compare` (``compare.py``) — controllers over the same seeds, or the fair protocol;
* :func:`search_schedule` (``search_schedule.py``) — a schedule by tree search over branching episodes;
* :func:`pbt_schedule` (``pbt_schedule.py``) — population-based training on Ray.

    from agents.configs import CompareConfig
    from agents.workflows import compare
    rows = compare(CompareConfig(controllers=("kd-t1", "random")))
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from agents.baselines import ScheduleController
from agents.cli import flatten, load_config_file, save_config
from agents.configs import (
    CONFIG_FILE,
    PROTOCOL_CONTROLLERS,
    CompareConfig,
    LearnConfig,
    PBTConfig,
    ReplayConfig,
    SearchConfig,
)
from agents.controllers import (
    build_controllers,
    describe_schedule,
    load_policy,
    load_schedule,
    plan_label,
)
from agents.evaluation import (
    evaluate,
    format_table,
    log_episode_scalars,
    save_best_schedule,
    write_comparison,
)
from agents.learning import (
    claim_run_dir,
    fit_surrogate,
    learn,
    make_learner,
    prepare_run_dir,
    pretrain_on_surrogate,
    resumable,
)
from agents.protocol import (
    candidate_schedules,
    format_protocol,
    menu_plans,
    merge_costs,
    read_records,
    run_protocol,
    write_protocol,
)
from agents.search import (
    SearchResult,
    format_search,
    required_branch_cache,
    search_trials,
    tree_search,
    write_search,
)
from agents.spaces import (
    Spaces,
    build_env,
    check_algorithm,
    configure_threads,
    expected_spaces,
)
from envs import DistillationEnv
from envs.actions import MenuCodec
from kd_backend.errors import ConfigError
from kd_backend.io import atomic_write_json
from kd_backend.locking import check_folder, claim_folder
from kd_backend.pipeline import config_dict
from kd_backend.reporting import model_card, write_hparams

REUSE_IGNORED = ("backend.progress", "backend.cache_dir", "cost_weight", "reward")
"""Env settings that do not change what the protocol reads from an episode (its ctrl and dev scores
and compute; the reward is not used to rank anything): ``--reuse`` ignores them, so a policy learned
with another ``cost_weight`` joins an earlier protocol."""

REUSE_MENU = ("menu",)
"""Settings ``--reuse`` accepts changed: candidates are matched by their plans, whatever menu named
them, so a protocol rerun with a longer menu (``kd-t1-end`` added) runs only its new candidates; the
``random`` controller, whose actions are menu indices, is then run again rather than reused."""


def read_protocol_run(folder: str | Path, cfg: CompareConfig) -> tuple[list[Any], dict[str, Any], bool]:
    """The episodes, phase costs and whether the menu changed, of an earlier ``compare.py --protocol``
    folder, for ``--reuse``.

    :raises ConfigError: a folder that is not a protocol run, or one run with other env settings
        (naming each setting that differs), whose episodes would mean something else.
    """

    folder = Path(folder)
    if not (folder / "protocol.json").is_file():
        raise ConfigError(f"--reuse {folder}: no protocol.json there; name a folder written by compare.py --protocol")
    before = load_config_file(CompareConfig, folder / CONFIG_FILE)
    old, new = flatten(config_dict(before.env)), flatten(config_dict(cfg.env))
    changed = {k for k in set(old) | set(new) if k not in REUSE_IGNORED and old.get(k) != new.get(k)}
    differ = sorted(changed - set(REUSE_MENU))
    if differ:
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in differ[:6])
        raise ConfigError(
            f"--reuse {folder}: its episodes were run with other env settings ({shown}); pass --config "
            f"{folder / CONFIG_FILE} to run with its settings, or drop --reuse"
        )
    try:
        costs = json.loads((folder / "protocol.json").read_text())["costs"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConfigError(f"--reuse {folder}: protocol.json is unreadable ({e}); drop --reuse") from e
    records = read_records(folder / "selection.jsonl") + read_records(folder / "evaluation.jsonl")
    return records, costs, bool(changed & set(REUSE_MENU))


def learn_policy(cfg: LearnConfig) -> list[dict]:
    """Learn a schedule with an SB3 agent, then compare it with baselines on fresh seeds (``learn_policy.py``)."""
    configure_threads(cfg.threads, cfg.env.backend)
    # Bad input fails here, before teachers are trained or data is encoded.
    spaces = expected_spaces(cfg.env)
    check_algorithm(cfg.algo, spaces)
    if cfg.vec_env == "ray":
        from agents.ray_vec_env import require_ray

        require_ray()  # without the extra: its install command, before any work
    baselines = build_controllers(cfg.baselines, cfg.env, spaces, seed=cfg.agent_seed)
    run_dir = prepare_run_dir(cfg)
    surrogate = fit_surrogate(cfg, spaces) if cfg.surrogate else None  # logs it cannot use: refused now
    env = build_env(cfg.env, spaces)  # data, teachers and student checked before anything is written
    claim_run_dir(cfg)
    save_config(run_dir / CONFIG_FILE, dataclasses.replace(cfg, resume=None, overwrite=False))

    show = cfg.env.backend.progress
    agent, done = make_learner(cfg, env, run_dir)
    learned = f"learned-{cfg.algo}"
    with resumable(cfg, run_dir):  # Ctrl-C: where the run stands and the --resume command, exit 130
        try:
            # a resumed run's checkpoint already holds what the pre-training taught it
            pretrained = pretrain_on_surrogate(agent, cfg, env, run_dir, surrogate) if surrogate and not done else None
            learn(agent, cfg, run_dir, done, show)
        finally:
            agent.get_env().close()  # subprocesses / Ray actors of a vector env (the driver's env stays)
        agent.save(run_dir / "policy.zip")
        records = evaluate(env, {learned: agent, **baselines}, cfg.eval_seeds, show)
    best = save_best_schedule(run_dir / "best_schedule.json", records, learned, run=str(run_dir))
    title = f"{cfg.name}: {env.distiller.spec.name}, {cfg.total_episodes} episodes of {cfg.algo}"
    if cfg.surrogate:
        title += f" after {cfg.surrogate_episodes} on a surrogate"
    rows = write_comparison(run_dir, records, title=title)
    own = next(r for r in rows if r["controller"] == learned)
    write_hparams(run_dir / "tensorboard", flatten(config_dict(dataclasses.replace(cfg, resume=None, overwrite=False))),
                  {f"{learned}/dev_score": own["dev_score"], f"{learned}/ctrl_score": own["ctrl_score"],
                   f"{learned}/compute": own["compute"]})

    print(f"\n{format_table(rows, title=f'{title} — evaluation on seeds {list(cfg.eval_seeds)}')}")
    if pretrained:
        print(pretrained)
    print(f"\nbest learned schedule (seed {best.seed}, chosen by ctrl score):")
    print(describe_schedule(best, cfg.env, spaces))
    print(f"\nwrote {run_dir}/: policy.zip best_schedule.json comparison.csv comparison.png episodes.jsonl")
    print(f"replay: python experiments/replay_schedule.py --config {run_dir}/config.yaml --policy {run_dir}/policy.zip")
    print("inspect: tensorboard --logdir runs")
    return rows


def replay(cfg: ReplayConfig) -> dict:
    """Replay a policy (closed loop) or a schedule (open loop) as one KD run and export the student (``replay_schedule.py``)."""
    from torch.utils.tensorboard import SummaryWriter

    source = cfg.source  # exactly one of --policy / --schedule
    configure_threads(cfg.threads, cfg.env.backend)
    # A missing file, a malformed schedule or a policy that does not fit the env fails here, before any work.
    spaces = expected_spaces(cfg.env)
    if cfg.policy is not None:
        controller = load_policy(cfg.policy, spaces)
    else:
        controller = load_schedule(cfg.schedule, cfg.env, spaces)
    out = cfg.out_dir
    check_folder(out, overwrite=cfg.overwrite)  # refused before any work, written only once all is built
    env = build_env(cfg.env, spaces)
    claim_folder(out, overwrite=cfg.overwrite)
    save_config(out / CONFIG_FILE, cfg)
    seed = cfg.env.backend.seed
    [record] = evaluate(env, {controller.name: controller}, [seed], cfg.env.backend.progress)
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
    log_episode_scalars(writer, record, env.teacher_names)
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
    print(describe_schedule(record, cfg.env, spaces))
    print(f"final ctrl {100 * record.final_ctrl_score:.1f}  dev {dict(dev.metrics)}  "
          f"compute {record.total_compute:.2f}")
    print(f"wrote {out}/: schedule.json metrics.json student/ (and TensorBoard events)")
    return metrics


def _protocol(cfg: CompareConfig, spaces: Spaces, out: Path, env: DistillationEnv, prior: tuple) -> list[dict]:
    names = dict.fromkeys((*(PROTOCOL_CONTROLLERS if cfg.heuristics else ()), *cfg.controllers))
    plans = menu_plans(env)
    controllers = build_controllers(list(names), cfg.env, spaces)
    candidates = candidate_schedules(plans, env.steps_per_episode, env.decisions_per_epoch, cfg.first_plans,
                                     cfg.rest_plans)
    result = run_protocol(
        env, candidates, controllers, cfg.selection_seeds, cfg.eval_seeds,
        oracle=cfg.oracle, branch_cache=cfg.protocol_branch_cache, show_progress=cfg.env.backend.progress,
        prior=prior[0],
        reuse_names=[n for n in names if not n.endswith((".zip", ".json")) and not (prior[2] and n == "random")],
    )
    if cfg.reuse is not None:
        result.costs = merge_costs(prior[1], result.costs)
    write_protocol(out, result, task=env.distiller.spec.name, reused_from=cfg.reuse)
    print(f"\n{format_protocol(result)}")
    print(f"\nwrote {out}/: protocol.csv selection.csv protocol.json protocol.png selection.jsonl evaluation.jsonl")
    return result.rows


def compare(cfg: CompareConfig) -> list[dict]:
    """Controllers over the same seeds, or the fair protocol with ``--protocol`` (``compare.py``)."""
    configure_threads(cfg.threads, cfg.env.backend)
    spaces = expected_spaces(cfg.env)
    controllers = build_controllers(cfg.controllers, cfg.env, spaces)  # all checked before any work
    out = Path(cfg.out)
    check_folder(out, overwrite=cfg.overwrite)  # refused before any work, written only once all is built
    prior = read_protocol_run(cfg.reuse, cfg) if cfg.reuse is not None else ((), {}, False)  # before out is claimed
    env = build_env(cfg.env, spaces)
    claim_folder(out, overwrite=cfg.overwrite)
    save_config(out / CONFIG_FILE, cfg)
    if cfg.protocol:
        return _protocol(cfg, spaces, out, env, prior)
    records = evaluate(env, controllers, cfg.eval_seeds, cfg.env.backend.progress)
    title = f"{env.distiller.spec.name}: {len(controllers)} controllers x {len(cfg.eval_seeds)} seeds"
    rows = write_comparison(out, records, title=title)
    print(f"\n{format_table(rows, title=title)}")
    print(f"\nwrote {out}/: comparison.csv comparison.png evaluation.jsonl")
    return rows


def search_schedule(cfg: SearchConfig) -> SearchResult:
    """Learn a schedule by tree search on the training seeds and ctrl (``search_schedule.py``)."""
    configure_threads(cfg.threads, cfg.env.backend)
    spaces = expected_spaces(cfg.env)
    out = Path(cfg.out)
    check_folder(out, overwrite=cfg.overwrite)
    menu_size = len(MenuCodec(cfg.env, spaces.num_teachers, spaces.regression).names)
    need = max(cfg.env.branch_cache, required_branch_cache(cfg.beam, menu_size, len(cfg.seeds)))
    env = build_env(cfg.env.replace(report_dev=False, branch_cache=need), spaces)  # dev is never read
    menu = menu_plans(env)
    claim_folder(out, overwrite=cfg.overwrite)
    save_config(out / CONFIG_FILE, cfg)
    trials = search_trials(cfg.beam, len(menu), len(cfg.seeds), env.steps_per_episode)
    from tqdm.auto import tqdm

    with tqdm(total=trials, desc="search", unit="trial", disable=not cfg.env.backend.progress) as bar:
        result = tree_search(env, menu, cfg.seeds, beam=cfg.beam, max_compute=cfg.max_compute, progress=bar)
    write_search(out, result, task=env.distiller.spec.name, teachers=list(env.teacher_names), menu=list(menu))
    print(f"\n{format_search(result)}")
    print(f"\nwrote {out}/: schedule.json search.csv search.json config.yaml")
    print(f"evaluate: python experiments/compare.py --config CONFIG --protocol --controllers {out}/schedule.json "
          "(CONFIG: the config searched with; the reference is chosen on other seeds)")
    return result


def pbt_schedule(cfg: PBTConfig) -> dict:
    """Population-based training over the plan knobs on Ray; the best trial's schedule (``pbt_schedule.py``)."""
    from agents.pbt import run_pbt
    from agents.ray_vec_env import (
        init_ray,  # Ray is an extra: imported only when PBT runs
    )

    threads = configure_threads(cfg.threads, cfg.env.backend)
    spaces = expected_spaces(cfg.env)  # bad input fails before any work
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(out / CONFIG_FILE, cfg)
    build_env(cfg.env, spaces)  # teachers fine-tuned and cached once, before the trials start
    ray = init_ray(cfg.ray_address, log_to_driver=False)  # Tune's per-checkpoint chatter stays in Ray's logs
    try:
        result = run_pbt(
            cfg.env, out, population=cfg.population, space=cfg.space, perturbation_interval=cfg.perturbation_interval,
            quantile_fraction=cfg.quantile_fraction, cpus_per_trial=cfg.cpus_per_trial,
            gpus_per_trial=cfg.gpus_per_trial, threads=threads, seed=cfg.pbt_seed,
        )
    finally:
        if cfg.ray_address is None:
            ray.shutdown()
    episodes = result.total_compute / max(result.lineage_compute, 1e-9)
    print(f"\nPBT, {result.trials} trials on {cfg.env.backend.task} (seed {cfg.env.backend.seed}): best final ctrl "
          f"{100 * result.final_ctrl_score:.1f} (all trials: "
          f"{', '.join(f'{100 * s:.1f}' for s in result.trial_scores)})")
    for i, plan in enumerate(result.plans):
        print(f"  step {i + 1}: {plan_label(plan, cfg.env, spaces)}")
    print(f"compute: the schedule {result.lineage_compute:.2f} plain epochs; all trials {result.total_compute:.2f} "
          f"(~{episodes:.1f} KD runs' worth, {result.decisions_trained} decisions trained, {result.wall_time:.0f} s)")
    print(f"wrote {out}/: pbt_schedule.json pbt_trials.json")
    print(f"replay: python experiments/replay_schedule.py --schedule {out}/pbt_schedule.json")
    return dataclasses.asdict(result)
