"""A tree-search controller: a KD schedule learned by beam search over branching episodes.

Episodes are few and costly (an SST-2 epoch is ~10 CPU seconds), and the SB3 learners need tens of
them to learn an H = 3 schedule. This controller instead searches the tree of plan sequences
directly, on the training seeds and the ctrl split only, and pays for each node once: with
branching episodes (:mod:`envs.branching`) every prefix is trained once per seed and replayed from
its stored state afterwards.

At depth ``d`` each of the ``beam`` kept prefixes is extended by every menu plan, on every search
seed; an extension is scored by the mean over seeds of the *objective so far*

    ``100 x ctrl score after it - cost_weight x compute spent so far`` (plain epochs),

which is the dense reward's return up to a constant (:mod:`envs.reward`), and the ``beam`` best
extensions are kept (ties: less compute, then menu order). A menu plan that ends the run
(``EpochPlan.final``, a name ending in ``-end``) makes its extension a *complete* schedule shorter
than the episode: it competes with the schedules that run to the last decision, never for a place
in the beam, and the search returns the best complete schedule it scored. A prefix that does not
end is ranked for the beam by the better of its own objective and that of the same prefix ended by
its last plan's final twin (``kd-t1`` by ``kd-t1-end``), when the menu has it: what the prefix is
worth if the run stops there, with the learning rate annealed (an unfinished prefix still has a
high learning rate, which a greedy ranking would hold against it). With ``beam = 1`` this
is greedy: H rounds of ``len(menu)`` one-epoch trials per seed, i.e. ``H x len(menu) x seeds``
decisions, every prefix replayed. With a compute budget (``max_compute``) only prefixes that can
still end within it are kept, so the search returns the best schedule it finds under the budget.
The result is an open-loop :class:`agents.baselines.ScheduleController` (the same plan at step t on every seed),
saved as a schedule file that ``compare.py`` and ``replay_schedule.py`` read.

Dev is never evaluated: the search env has ``report_dev=False`` and the distiller's dev evaluation
raises while searching (:func:`agents.protocol.dev_sealed`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from agents.baselines import ScheduleController
from agents.protocol import PhaseCost, dev_sealed, final_twin
from envs.distillation_env import DistillationEnv
from envs.records import StepInfo
from envs.reward import POINTS
from kd_backend.errors import ConfigError
from kd_backend.io import atomic_write_json, atomic_write_text
from kd_backend.plan import EpochPlan


@dataclass(frozen=True)
class Node:
    """One searched prefix: its plans, and what it gave averaged over the search seeds.

    :param depth: number of decisions (1 = the first epoch's plan).
    :param names: the menu names of the prefix's plans, in order.
    :param objective: mean over seeds of ``100 x ctrl - cost_weight x compute`` after the prefix.
    :param ctrl_score: mean ctrl score after the prefix.
    :param compute: mean compute of the prefix (plain epochs).
    :param per_seed: the objective on each search seed, in seed order.
    :param kept: whether the prefix stayed in the beam, or, for a complete schedule (one that ends
        in a final plan or at the episode's last decision), whether it is in the running for the result.
    :param feasible: whether the prefix can still end within the search's compute budget
        (always True without one).
    """

    depth: int
    names: tuple[str, ...]
    objective: float
    ctrl_score: float
    compute: float
    per_seed: tuple[float, ...]
    kept: bool = False
    feasible: bool = True

    @property
    def label(self) -> str:
        return ">".join(self.names)


@dataclass(frozen=True)
class SearchResult:
    """The searched schedule, every node scored on the way, and what the search cost.

    :param names: the schedule's menu names, one per decision (fewer than the episode's when the
        last one ends the run).
    :param plans: the schedule's plans.
    :param nodes: every prefix scored, depth by depth.
    :param seeds: the search seeds.
    :param beam: prefixes kept per depth.
    :param cost_weight: points charged per plain epoch in the objective.
    :param max_compute: the compute budget of a schedule (plain epochs), None = no budget.
    :param cost: episodes, decisions, decisions replayed, epochs trained, CPU and wall seconds.
    """

    names: tuple[str, ...]
    plans: tuple[EpochPlan, ...]
    nodes: tuple[Node, ...]
    seeds: tuple[int, ...]
    beam: int
    cost_weight: float
    max_compute: float | None
    cost: Mapping[str, Any]

    @property
    def label(self) -> str:
        return ">".join(self.names)

    def controller(self, name: str = "tree-search") -> ScheduleController:
        """The open-loop controller that applies the searched schedule."""
        return ScheduleController(self.plans, name=name)


def required_branch_cache(beam: int, menu_size: int, num_seeds: int) -> int:
    """Stored states one depth of the search needs so that no kept prefix is evicted before it is extended."""
    return beam * (menu_size + 1) * num_seeds


def search_trials(beam: int, menu_size: int, num_seeds: int, depth: int) -> int:
    """(prefix, seed) pairs :func:`tree_search` scores: at depth d, min(beam, menu^(d-1)) kept prefixes
    times every plan, on every seed."""
    return sum(min(beam, menu_size ** d) for d in range(depth)) * menu_size * num_seeds


def _objective(ctrl: float, compute: float, cost_weight: float) -> float:
    return POINTS * ctrl - cost_weight * compute


def tree_search(
    env: DistillationEnv,
    menu: Mapping[str, EpochPlan],
    seeds: Sequence[int],
    beam: int = 1,
    cost_weight: float | None = None,
    max_compute: float | None = None,
    progress: Any = None,
) -> SearchResult:
    """Search a schedule on ``seeds`` by beam search over the menu (see the module docstring).

    :param env: a :class:`DistillationEnv` with branching on (``EnvConfig.branch_cache`` at least
        :func:`required_branch_cache`) and ``report_dev=False``; its episode length is the
        schedule's length.
    :param menu: the plans to choose from, by name (e.g. :func:`agents.protocol.menu_plans`).
    :param seeds: the search (training) seeds; keep them disjoint from evaluation seeds.
    :param beam: prefixes kept per depth (1 = greedy).
    :param cost_weight: points per plain epoch; None = the env's ``cost_weight``.
    :param max_compute: a budget (plain epochs) the schedule must fit: a prefix is kept only if its
        compute plus the remaining decisions, each at the least a step can cost, stays within it
        (``feasible``), so the result is the best schedule the search found under the budget. The
        least a step can cost is the cheapest step measured so far or the menu's smallest data share
        times the cheapest full-data step, whichever is lower; complete schedules are checked on
        their measured compute.
    :param progress: a tqdm-like bar updated once per scored (prefix, seed).
    :raises ConfigError: an empty menu or seed list, a beam below 1, branching off or too small,
        an env that reports dev, a budget that is not positive, or one no prefix fits.
    """
    seeds = tuple(int(s) for s in seeds)
    if not menu:
        raise ConfigError("the search menu is empty; give at least one plan (EnvConfig.menu)")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"search seeds {list(seeds)} must be one or more distinct seeds")
    if not isinstance(beam, int) or isinstance(beam, bool) or beam < 1:
        raise ConfigError(f"beam={beam!r} must be an integer >= 1 (1 = greedy)")
    need = required_branch_cache(beam, len(menu), len(seeds))
    if env.branches is None or env.branches.capacity < need:
        have = 0 if env.branches is None else env.branches.capacity
        raise ConfigError(
            f"the tree search replays every prefix from a stored state and needs branch_cache >= {need} "
            f"(beam {beam} x (menu {len(menu)} + 1) x {len(seeds)} seeds); the env has {have}: pass --branch-cache {need}"
        )
    if env.config.report_dev:
        raise ConfigError("the search env must not report dev (EnvConfig.report_dev=False); dev never steers learning")
    if max_compute is not None and not (isinstance(max_compute, (int, float)) and max_compute > 0):
        raise ConfigError(f"max_compute={max_compute!r} must be a positive budget in plain epochs, or None")
    weight = env.config.cost_weight if cost_weight is None else float(cost_weight)
    horizon = env.steps_per_episode
    can_end = any(p.final for p in menu.values())  # a prefix may then end after one more decision
    twins = {n: final_twin(p, menu) for n, p in menu.items()}
    # What a later decision costs at least: the cheapest step measured so far, or the smallest data
    # share of the menu times the cheapest full-data step, whichever is lower. (A step's cost depends
    # on the state: a stale-scored selection from scratch first scores the whole pool, ~r + 1/3, but
    # only ~r after an epoch, so first steps alone would overprice the later ones.)
    share = {n: p.fraction if p.scope == "epoch" else 1.0 for n, p in menu.items()}
    cheapest_step = cheapest_full = float("inf")
    names = list(menu)
    rank = _rank({n: i for i, n in enumerate(names)})
    cost = PhaseCost()
    hits0, trained0, cpu0, wall0 = env.branches.hits, env.compute_trained, time.process_time(), time.perf_counter()
    beams: list[tuple[str, ...]] = [()]
    spent: dict[tuple[str, ...], float] = {(): 0.0}
    nodes: list[Node] = []
    complete: list[Node] = []  # schedules that end: a final plan, or the episode's last decision
    with dev_sealed(env.distiller):
        for depth in range(1, horizon + 1):
            if not beams:
                break  # every kept prefix has ended
            scored = []
            for prefix in beams:
                for name in names:
                    path = (*prefix, name)
                    runs = [_run_prefix(env, [menu[n] for n in path], seed) for seed in seeds]
                    cost.decisions += depth * len(seeds)  # the prefix's steps, replayed or trained
                    if progress is not None:
                        progress.update(len(seeds))
                    per_seed = tuple(_objective(c, k, weight) for c, k in runs)
                    scored.append(Node(
                        depth=depth, names=path, objective=sum(per_seed) / len(seeds),
                        ctrl_score=sum(c for c, _ in runs) / len(seeds), compute=sum(k for _, k in runs) / len(seeds),
                        per_seed=per_seed,
                    ))
            steps = [(n.compute - spent[n.names[:-1]], share[n.names[-1]]) for n in scored]
            cheapest_step = min(cheapest_step, *(c for c, _ in steps))
            cheapest_full = min(cheapest_full, *(c for c, r in steps if r == 1.0), float("inf"))
            floor = min(cheapest_step, min(share.values()) * cheapest_full)
            ended = {n.names for n in scored if depth == horizon or menu[n.names[-1]].final}
            left = 0 if depth == horizon else 1 if can_end else horizon - depth  # fewest decisions still to pay
            if max_compute is not None:
                scored = [replace(n, feasible=n.compute + (0 if n.names in ended else left) * floor <= max_compute + 1e-9)
                          for n in scored]
            value = {n.names: n.objective for n in scored if n.feasible}
            for n in scored:  # a prefix is worth at least what ending it at once gives
                ending = n.names[:-1] + (twins[n.names[-1]],) if twins[n.names[-1]] else None
                if n.names in value and ending in value:
                    value[n.names] = max(value[n.names], value[ending])
            ranked = sorted((n for n in scored if n.feasible and n.names not in ended),
                            key=lambda n: (-value[n.names], *rank(n)))
            done = [n for n in scored if n.feasible and n.names in ended]
            if not ranked and not done and not complete:
                low = min(n.compute + (0 if n.names in ended else left) * floor for n in scored)
                raise ConfigError(
                    f"no schedule fits max_compute={max_compute:g} plain epochs: at depth {depth} the cheapest "
                    f"prefix needs at least {low:.2f} (its compute plus {left} decision(s) at the "
                    f"least a step can cost, {floor:.2f}); raise --max-compute or offer cheaper plans"
                )
            keep = {n.names for n in ranked[:beam]} | {n.names for n in done}
            nodes.extend(replace(n, kept=n.names in keep) for n in scored)
            complete.extend(replace(n, kept=True) for n in done)
            beams = [n.names for n in ranked[:beam]]
            spent = {n.names: n.compute for n in ranked[:beam]}
    cost.episodes = len(complete) * len(seeds)  # complete episodes
    cost.decisions_replayed = env.branches.hits - hits0
    cost.epochs_trained = env.compute_trained - trained0
    cost.cpu_seconds = time.process_time() - cpu0
    cost.wall_seconds = time.perf_counter() - wall0
    best = min(complete, key=rank).names
    return SearchResult(
        names=best, plans=tuple(menu[n] for n in best), nodes=tuple(nodes), seeds=seeds, beam=beam,
        cost_weight=weight, max_compute=None if max_compute is None else float(max_compute),
        cost=cost.to_dict(),
    )


def _rank(order: Mapping[str, int]) -> Any:
    """Sort key of nodes: best objective first; ties: less compute, then menu order."""
    return lambda n: (-n.objective, n.compute, [order[x] for x in n.names])


def _run_prefix(env: DistillationEnv, plans: Sequence[EpochPlan], seed: int) -> tuple[float, float]:
    """Reset to ``seed`` and apply ``plans`` (all but the last replayed from stored states); the
    ctrl score and compute after the last."""
    env.reset(seed=seed)
    info: dict[str, Any] = {}
    for plan in plans:
        info = env.step(plan)[-1]
    step = StepInfo.from_info(info)
    return step.ctrl_score, step.compute_total


# ---------------------------------------------------------------------------------------------- output
def write_search(out: str | Path, result: SearchResult, **metadata: Any) -> Path:
    """Write ``schedule.json`` (the schedule, readable by ``ScheduleController.load`` and every
    script's ``.json`` controller), ``search.csv`` (every node) and ``search.json`` (the choice,
    seeds, objective and cost)."""
    out = Path(out)
    summary = {
        "schedule": list(result.names), "seeds": list(result.seeds), "beam": result.beam,
        "cost_weight": result.cost_weight, "max_compute": result.max_compute, "objective": "100 x ctrl score - cost_weight x compute (plain epochs)",
        "cost": dict(result.cost), **metadata,
    }
    result.controller().save(out / "schedule.json", controller="tree-search", **summary)
    fields = ("depth", "schedule", "objective", "ctrl_score", "compute", "kept", "feasible", "per_seed")
    lines = [",".join(fields)]
    for n in result.nodes:
        per_seed = " ".join(f"{v:.3f}" for v in n.per_seed)
        lines.append(f"{n.depth},{n.label},{n.objective:.4f},{n.ctrl_score:.5f},{n.compute:.4f},{int(n.kept)},{int(n.feasible)},{per_seed}")
    atomic_write_text(out / "search.csv", "\n".join(lines) + "\n")
    atomic_write_json(out / "search.json", {**summary, "nodes": [{**asdict(n), "label": n.label} for n in result.nodes]})
    return out


def format_search(result: SearchResult) -> str:
    """The search, depth by depth: every extension of the kept prefixes, the kept ones marked."""
    budget = "" if result.max_compute is None else f", max_compute {result.max_compute:g}"
    lines = [f"tree search (beam {result.beam}, cost_weight {result.cost_weight:g}{budget}, seeds {list(result.seeds)}): "
             f"objective = 100 x ctrl - cost_weight x compute" + ("; x = over the budget" if budget else "")]
    for depth in sorted({n.depth for n in result.nodes}):
        lines.append(f"  depth {depth}:")
        for n in sorted((n for n in result.nodes if n.depth == depth), key=lambda n: -n.objective):
            mark = "*" if n.kept else (" " if n.feasible else "x")
            lines.append(f"   {mark} {n.label:<48} objective {n.objective:7.2f}  ctrl {100 * n.ctrl_score:5.1f}  "
                         f"compute {n.compute:.2f}")
    c = result.cost
    lines.append(f"schedule: {result.label}")
    lines.append(f"cost: {c['decisions']} decisions, {c['decisions_replayed']} replayed, {c['decisions'] - c['decisions_replayed']} trained "
                 f"(one decision: one epoch or part of one; {c['epochs_trained']:.1f} plain epochs of training), "
                 f"{c['cpu_seconds']:.0f} CPU s")
    return "\n".join(lines)
