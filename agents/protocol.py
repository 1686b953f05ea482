"""A comparison protocol that cannot flatter the controller (issue 9, item 1).

1. **Candidates** (:func:`candidate_schedules`): every menu plan applied to every step (*static*
   plans) and a cheap *grid* of fixed schedules "plan A for the first epoch, plan B for the rest"
   (A from ``first_plans``, by default the menu's full-data plans; B from ``rest_plans``, by
   default the whole menu).
2. **Selection** on *selection seeds*, disjoint from the evaluation seeds, with the dev split
   sealed (the selection env never reports dev, and :func:`dev_sealed` makes any dev evaluation
   raise): the **reference** is the candidate with the best mean ctrl score; the **best static
   plan** is the best static candidate by the same rule (it may stop early, with an ``-end``
   twin), the **best full-horizon static plan** the best one that runs every epoch. Dev never
   chooses anything.
3. **Evaluation** on fresh *evaluation seeds*: the reference, both best static plans, the given
   controllers (the paper's heuristics, random, learned policies, schedules) and, optionally, every
   candidate, whose dev-best is the **oracle**: an upper bound chosen on the evaluation seeds' dev
   scores, not a fair reference.
4. **Report** (:func:`report_rows`): per controller dev and ctrl mean ± standard error, mean
   compute, the *paired* per-seed difference to the reference (mean ± SE of the differences, which
   cancels the seed's shared luck) and the compute ratio to the best static plan; plus the search
   cost (episodes, decisions retrained and replayed from branches, CPU seconds), so that a learned
   controller's learning cost can be set against the grid search behind the reference.
5. **Verdicts** against the target (:data:`TARGET_SHARE`): each controller's ``target`` column
   (:func:`target_verdict`), and the *budget line* (:func:`budget_best`): the ctrl-best candidate
   that costs at most the target share of the best static plan, read from the selection table
   alone. When even that candidate falls well short of the reference on ctrl, no schedule on the
   menu can meet the target on this task, whatever controller picks it.

Candidates share prefixes (every "A then B" starts with A's first epoch), so the search runs on
an env with branching episodes (:mod:`envs.branching`): with the same seed, a shared prefix is
trained once and replayed bit for bit.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agents.baselines import (
    Controller,
    EpisodeRecord,
    ScheduleController,
    evaluate_controller,
)
from envs.actions import MenuCodec
from envs.distillation_env import DistillationEnv
from kd_backend.errors import ConfigError, DynaKDError
from kd_backend.io import atomic_write_json, atomic_write_text, save_figure
from kd_backend.metrics import constant_score, no_better_than_constant
from kd_backend.plan import EpochPlan

CandidateKind = Literal["static", "grid"]
ORACLE_ROLE = "oracle (dev-chosen upper bound, not a fair reference)"
REFERENCE_ROLE = "reference (ctrl-best of static plans and grid)"
BEST_STATIC_ROLE = "best static plan (by ctrl)"
FULL_STATIC_ROLE = "best full-horizon static plan (by ctrl)"
_SHORT_ROLES = {REFERENCE_ROLE: "reference", BEST_STATIC_ROLE: "best static", FULL_STATIC_ROLE: "best full-horizon static",
                ORACLE_ROLE: "oracle (dev-chosen: an upper bound)"}
TARGET_SHARE = 0.6
"""The saving a controller should bring (issue 9): the reference's dev score (paired, within one SE
or better) at no more than this share of the best static plan's compute, and no more than the
reference's. The other way to meet the target: beat the reference by more than 2 SE at its compute."""
EQUAL_COMPUTE_TOLERANCE = 0.02
"""How much more compute than the reference's still counts as "equal compute" (a share of it)."""
COMPUTE_NOISE = 0.005
"""The relative noise of a compute measurement, allowed on every "no more than" of the target: compute
counts the FLOPs of dynamically padded batches, so one plan's epochs differ by up to ~0.4% with the
shuffle (`kd-t1` on SST-2: 1.047-1.051 plain epochs per epoch); a 3-epoch run of a 5-epoch plan
measures 0.600-0.601 of it."""


class DevReadDuringSelection(DynaKDError):
    """The dev split was evaluated while candidates were being selected (a protocol bug)."""


@dataclass(frozen=True)
class Candidate:
    """A fixed schedule the reference is chosen from.

    :param name: ``A`` for a static plan, ``A>B`` for "A for the first epoch, B for the rest".
    :param kind: ``static`` or ``grid``.
    :param plans: one plan per decision of an episode, or fewer ending in a final plan.
    """

    name: str
    kind: CandidateKind
    plans: tuple[EpochPlan, ...]

    def controller(self) -> ScheduleController:
        """The open-loop controller that applies this schedule."""
        return ScheduleController(self.plans, name=self.name)


def menu_plans(env: DistillationEnv) -> dict[str, EpochPlan]:
    """The env's discrete menu (``EnvConfig.menu``, or the default) as decoded plans, by name,
    whatever the env's action space."""
    codec = MenuCodec(env.config, env.distiller.num_teachers, env.distiller.spec.is_regression)
    return dict(zip(codec.names, codec.plans, strict=True))


def is_full_data(plan: EpochPlan) -> bool:
    """Whether a plan trains on every instance (fraction 1, or the paper's batch-scope selection)."""
    return plan.fraction >= 1.0 or plan.scope == "batch"


def candidate_schedules(
    plans: Mapping[str, EpochPlan],
    steps: int,
    first_steps: int = 1,
    first_plans: Sequence[str] | None = None,
    rest_plans: Sequence[str] | None = None,
) -> list[Candidate]:
    """Static plans (each plan every step) and the "A first, then B" grid (A != B).

    Plans that end the run (``EpochPlan.final``, names ending in ``-end``) make the horizon part of
    the choice, for the reference as for a controller: a final B ends the run right after A's
    epoch (a final plan alone is a one-decision run), and a plan whose final twin is also on the
    menu (``kd-t1`` and ``kd-t1-end``) adds every shorter run of it, static or as B, ended by the
    twin (``kd-t1>kd-t1>kd-t1-end``: a static plan over 3 epochs, its last with the schedule's
    decay). Such shorter runs count as static (or grid) candidates.

    :param plans: the menu, by name.
    :param steps: decisions per episode.
    :param first_steps: decisions of the first epoch (``decisions_per_epoch``).
    :param first_plans: names A may take; None = the menu's full-data plans (:func:`is_full_data`)
        that do not end the run.
    :param rest_plans: names B may take; None = the whole menu. Empty ``first_plans`` or
        ``rest_plans`` leave only the static plans.
    :return: static candidates first (menu order), then the grid, grouped by A (so that schedules
        sharing a first epoch run back to back and share its branch).
    :raises ConfigError: an unknown name, or fewer steps than the first epoch plus one.
    """
    if not plans:
        raise ConfigError("candidate_schedules needs at least one plan on the menu")
    first = [n for n, p in plans.items() if is_full_data(p) and not p.final] if first_plans is None else list(first_plans)
    rest = list(plans) if rest_plans is None else list(rest_plans)
    unknown = sorted({n for n in (*first, *rest) if n not in plans})
    if unknown:
        raise ConfigError(f"grid plan name(s) {unknown} are not on the menu {list(plans)}; name menu plans")
    ending = [n for n in first if plans[n].final]
    if ending:
        raise ConfigError(f"first plan(s) {ending} end the run after the first epoch; an 'A first, then B' grid needs "
                          "an A that does not (name plans without -end)")
    if (first or rest) and steps <= first_steps:
        raise ConfigError(
            f"an 'A first, then B' grid needs more than the first epoch's {first_steps} decision(s) per episode "
            f"(the episode has {steps}); use a longer horizon, or pass no grid plans"
        )
    twin = {n: final_twin(p, plans) for n, p in plans.items()}
    out: list[Candidate] = []
    for n, p in plans.items():
        out.extend(_runs(n, "static", [], n, p, twin[n], steps, plans))
    for a in dict.fromkeys(first):
        head = [plans[a]] * first_steps
        for b in dict.fromkeys(rest):
            if a != b:
                out.extend(_runs(f"{a}>{b}", "grid", head, b, plans[b], twin[b], steps, plans, prefix=a))
    unique: dict[tuple[EpochPlan, ...], Candidate] = {}
    for c in out:
        unique.setdefault(c.plans, c)  # "A>B-end" is also "A, then B ending at once": keep the first name
    return list(unique.values())


def final_twin(plan: EpochPlan, plans: Mapping[str, EpochPlan]) -> str | None:
    """The menu name of ``plan`` as a final plan (the same plan ending the run), if the menu has one."""
    if plan.final:
        return None
    ended = plan.replace(final=True)
    return next((n for n, p in plans.items() if p == ended), None)


def _runs(
    name: str, kind: CandidateKind, head: list[EpochPlan], rest_name: str, rest: EpochPlan, twin: str | None,
    steps: int, plans: Mapping[str, EpochPlan], prefix: str | None = None,
) -> list[Candidate]:
    """``head`` then ``rest`` to the episode's end; a final ``rest`` ends the run at once; with a final
    twin of ``rest`` on the menu, also every shorter run (``rest`` some decisions, then its twin).
    Shorter runs are named by their plans joined with ``>``, as the search names schedules."""
    if rest.final:
        return [Candidate(name, kind, (*head, rest))]
    out = [Candidate(name, kind, (*head, *[rest] * (steps - len(head))))]
    if twin is not None:
        for k in range(steps - len(head) - 1):
            names = [*([prefix] * len(head) if prefix else []), *[rest_name] * k, twin]
            out.append(Candidate(">".join(names), kind, (*head, *[rest] * k, plans[twin])))
    return out


# ---------------------------------------------------------------------------------------------- statistics
def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample sd / sqrt(n)); the SE is NaN below two values."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    se = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else float("nan")
    return float(arr.mean()), se


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]) -> tuple[float, float]:
    """Mean ± SE of the per-seed differences ``values[s] - reference[s]``.

    :param values: score per seed of the controller.
    :param reference: score per seed of the reference; it must cover the same seeds.
    :raises ConfigError: the two were not run on the same seeds.
    """
    if set(values) != set(reference):
        raise ConfigError(
            f"a paired difference needs the same seeds on both sides, got {sorted(values)} and {sorted(reference)}"
        )
    return mean_se([values[s] - reference[s] for s in sorted(values)])


def _by_controller(records: Sequence[EpisodeRecord]) -> dict[str, list[EpisodeRecord]]:
    groups: dict[str, list[EpisodeRecord]] = {}
    for r in records:
        groups.setdefault(r.controller, []).append(r)
    return groups


def _per_seed(records: Sequence[EpisodeRecord], attr: str) -> dict[int, float]:
    out = {}
    for r in records:
        value = getattr(r, attr)
        if value is None:
            raise ConfigError(f"episode of {r.controller!r} seed {r.seed} has no {attr}; evaluate with report_dev on")
        out[r.seed] = float(value)
    return out


def selection_table(candidates: Sequence[Candidate], records: Sequence[EpisodeRecord]) -> list[dict[str, Any]]:
    """Each candidate's mean ± SE ctrl score and mean compute over the selection seeds (no dev column:
    dev is never read while selecting), ranked best first by ctrl score."""
    groups = _by_controller(records)
    rows = []
    for c in candidates:
        if c.name not in groups:
            raise ConfigError(f"candidate {c.name!r} has no selection episode")
        ctrl, ctrl_se = mean_se([r.final_ctrl_score for r in groups[c.name]])
        rows.append({
            "candidate": c.name, "kind": c.kind, "episodes": len(groups[c.name]), "ctrl_score": ctrl,
            "ctrl_score_se": ctrl_se, "compute": mean_se([r.total_compute for r in groups[c.name]])[0],
        })
    # Best ctrl first; a tie goes to the cheaper, then to the earlier candidate (a stable sort).
    rows.sort(key=lambda r: (-r["ctrl_score"], r["compute"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def pick_reference(table: Sequence[Mapping[str, Any]], kind: CandidateKind | None = None) -> str:
    """The best candidate of a :func:`selection_table` by ctrl score (``kind``: among those only)."""
    rows = [r for r in table if kind is None or r["kind"] == kind]
    if not rows:
        raise ConfigError(f"no {kind or ''} candidate to pick a reference from".replace("  ", " "))
    return min(rows, key=lambda r: r["rank"])["candidate"]


def pick_full_static(candidates: Sequence[Candidate], table: Sequence[Mapping[str, Any]]) -> str:
    """The best static candidate by ctrl that runs the whole horizon (no plan ends the run early):
    the issue's "every menu plan applied to every epoch", without the early stops of ``-end`` twins."""
    full = {c.name for c in candidates if c.kind == "static" and not any(p.final for p in c.plans)}
    if not full:
        raise ConfigError("no static candidate runs the whole horizon (every plan on the menu ends the run)")
    return pick_reference([r for r in table if r["candidate"] in full])


def pick_oracle(records: Sequence[EpisodeRecord], names: Sequence[str]) -> str:
    """The candidate with the best mean *dev* score on the evaluation seeds (an upper bound only)."""
    groups = _by_controller(records)
    return max(names, key=lambda n: mean_se(list(_per_seed(groups[n], "final_dev_score").values()))[0])


def budget_best(
    table: Sequence[Mapping[str, Any]], reference: str, best_static: str, share: float = TARGET_SHARE
) -> dict[str, Any] | None:
    """The ctrl-best candidate of a :func:`selection_table` that costs at most ``share`` of the best
    static plan's compute (selection episodes; dev is not read): what the menu offers at the target's
    budget, whoever picks it.

    :param table: the selection table (ranked best first).
    :param reference: the reference's name.
    :param best_static: the best static plan's name.
    :param share: the budget as a share of the best static plan's compute.
    :return: ``candidate``, ``kind``, ``ctrl_score``, ``ctrl_score_se``, ``compute``, ``budget`` (the
        compute bound), ``ctrl_gap_vs_reference`` (its ctrl score minus the reference's, selection
        seeds); None if no candidate is that cheap.
    """
    rows = {r["candidate"]: r for r in table}
    budget = share * float(rows[best_static]["compute"])
    cheap = [r for r in table if float(r["compute"]) <= budget * (1 + COMPUTE_NOISE)]
    if not cheap:
        return None
    best = min(cheap, key=lambda r: r["rank"])
    return {
        "candidate": best["candidate"], "kind": best["kind"], "ctrl_score": best["ctrl_score"],
        "ctrl_score_se": best["ctrl_score_se"], "compute": best["compute"], "budget": budget,
        "ctrl_gap_vs_reference": float(best["ctrl_score"]) - float(rows[reference]["ctrl_score"]),
    }


def target_verdict(
    row: Mapping[str, Any], reference_compute: float, share: float = TARGET_SHARE,
    ratio_key: str = "compute_ratio_vs_best_static",
) -> str:
    """Whether a :func:`report_rows` row meets the target (:data:`TARGET_SHARE`), and if not, why.

    ``met: saving`` — dev within one SE of the reference or better (paired: difference + SE >= 0) at
    no more than ``share`` of the best static plan's compute and no more than the reference's;
    ``met: better`` — dev above the reference by more than 2 SE at no more than the reference's
    compute (:data:`EQUAL_COMPUTE_TOLERANCE`); otherwise ``no: ...`` naming what falls short. Each
    "no more than" allows :data:`COMPUTE_NOISE`.

    :param row: a report row (``dev_diff_vs_reference``, its ``_se``, ``compute``,
        ``compute_ratio_vs_best_static``).
    :param reference_compute: the reference's mean compute on the same seeds.
    :param share: the saving target.
    :param ratio_key: the row's compute ratio to judge the saving by (``compute_ratio_vs_full_static``
        judges it against the best static plan that runs the whole horizon).
    """
    diff, se = float(row["dev_diff_vs_reference"]), float(row["dev_diff_vs_reference_se"])
    ratio, compute = float(row[ratio_key]), float(row["compute"])
    se = 0.0 if math.isnan(se) else se
    at_ref_cost = compute <= reference_compute * (1 + EQUAL_COMPUTE_TOLERANCE)
    if diff > 2 * se and diff > 0 and at_ref_cost:
        return "met: better"
    within = diff + se >= 0
    within_share = ratio <= share * (1 + COMPUTE_NOISE)
    below_reference = compute <= reference_compute * (1 + COMPUTE_NOISE)
    if within and within_share and below_reference:
        return "met: saving"
    why = []
    if not within:
        why.append(f"dev {100 * diff:+.1f} ± {100 * se:.1f}" + (f" ({-diff / se:.2f} SE)" if se > 0 else ""))
    if not within_share:
        why.append(f"compute {ratio:.3f} > {share:g}")
    elif not below_reference:
        why.append("compute above the reference's")
    return "no: " + ", ".join(why)


def report_rows(
    records: Sequence[EpisodeRecord], roles: Mapping[str, Sequence[str]], reference: str, best_static: str,
    full_static: str | None = None,
) -> list[dict[str, Any]]:
    """One row per controller of ``roles`` (in its order) over the evaluation seeds.

    Columns: dev and ctrl score mean ± SE, compute mean, the paired per-seed differences to the
    reference (dev and ctrl; mean ± SE of the differences), the compute ratio to the best static
    plan, ``upper_bound`` (True for the oracle) and ``target`` (:func:`target_verdict`; empty for
    the reference and the oracle); then the same ratio and verdict against ``full_static``, the best
    static plan that runs the whole horizon (None: ``best_static``), in
    ``compute_ratio_vs_full_static`` and ``target_vs_full_static``.
    """
    groups = _by_controller(records)
    ref = groups[reference]
    ref_dev, ref_ctrl = _per_seed(ref, "final_dev_score"), _per_seed(ref, "final_ctrl_score")
    static_compute = mean_se([r.total_compute for r in groups[best_static]])[0]
    full_compute = mean_se([r.total_compute for r in groups[full_static or best_static]])[0]
    rows = []
    for name, role in roles.items():
        group = groups[name]
        dev, ctrl = _per_seed(group, "final_dev_score"), _per_seed(group, "final_ctrl_score")
        dev_m, dev_se = mean_se(list(dev.values()))
        ctrl_m, ctrl_se = mean_se(list(ctrl.values()))
        d_dev, d_dev_se = paired_difference(dev, ref_dev)
        d_ctrl, d_ctrl_se = paired_difference(ctrl, ref_ctrl)
        compute = mean_se([r.total_compute for r in group])[0]
        rows.append({
            "controller": name, "role": ", ".join(role), "episodes": len(group),
            "seeds": " ".join(str(s) for s in sorted(dev)),
            "dev_score": dev_m, "dev_score_se": dev_se, "ctrl_score": ctrl_m, "ctrl_score_se": ctrl_se,
            "compute": compute, "dev_diff_vs_reference": d_dev, "dev_diff_vs_reference_se": d_dev_se,
            "ctrl_diff_vs_reference": d_ctrl, "ctrl_diff_vs_reference_se": d_ctrl_se,
            "compute_ratio_vs_best_static": compute / static_compute if static_compute > 0 else float("nan"),
            "upper_bound": ORACLE_ROLE in role,
            "compute_ratio_vs_full_static": compute / full_compute if full_compute > 0 else float("nan"),
        })
    ref_compute = next(r["compute"] for r in rows if r["controller"] == reference)
    for r in rows:
        judged = r["controller"] != reference and not r["upper_bound"]
        r["target"] = target_verdict(r, ref_compute) if judged else ""
        r["target_vs_full_static"] = (
            target_verdict(r, ref_compute, ratio_key="compute_ratio_vs_full_static") if judged else "")
    return rows


# ---------------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def dev_sealed(distiller: Any) -> Iterator[None]:
    """Within the block, any evaluation of the dev split raises :class:`DevReadDuringSelection`."""
    had = "evaluate" in distiller.__dict__
    inner = distiller.evaluate

    def evaluate(split: str = "ctrl"):
        if split == "dev":
            raise DevReadDuringSelection(
                "the dev split was evaluated during the protocol's selection phase; selection must use ctrl only "
                "(run the selection env with report_dev=False)"
            )
        return inner(split)

    distiller.evaluate = evaluate
    try:
        yield
    finally:
        if had:
            distiller.evaluate = inner
        else:
            del distiller.evaluate


@dataclass
class PhaseCost:
    """What one phase of the protocol spent."""

    episodes: int = 0
    decisions: int = 0
    decisions_replayed: int = 0
    """Decisions served from a stored branch (not retrained)."""
    epochs_trained: float = 0.0
    """Training compute of the decisions not replayed, in plain full-data epochs (a 30% epoch
    counts ~0.3): :attr:`envs.distillation_env.DistillationEnv.compute_trained` spent in the phase."""
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    episodes_reused: int = 0
    """Episodes taken from an earlier run (``prior``) instead of being run; they cost nothing here."""
    compute_reused: float = 0.0
    """The reused episodes' compute (their records' ``total_compute``, plain epochs): what
    :func:`merge_costs` charges of the earlier run's cost."""

    @property
    def fraction_replayed(self) -> float:
        return self.decisions_replayed / self.decisions if self.decisions else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "episodes": self.episodes, "decisions": self.decisions, "decisions_replayed": self.decisions_replayed,
            "epochs_trained": self.epochs_trained,
            "fraction_replayed": self.fraction_replayed, "cpu_seconds": self.cpu_seconds,
            "wall_seconds": self.wall_seconds, "episodes_reused": self.episodes_reused,
            "compute_reused": self.compute_reused,
        }


@dataclass
class ProtocolResult:
    """Everything the protocol chose, ran and measured (see :func:`write_protocol`)."""

    candidates: list[Candidate]
    selection: list[dict[str, Any]]
    reference: str
    best_static: str
    oracle: str | None
    rows: list[dict[str, Any]]
    selection_records: list[EpisodeRecord]
    eval_records: list[EpisodeRecord]
    selection_seeds: tuple[int, ...]
    eval_seeds: tuple[int, ...]
    costs: dict[str, dict[str, Any]] = field(default_factory=dict)
    budget_best: dict[str, Any] | None = None
    """:func:`budget_best` of the selection table: what the menu offers at the target's budget."""
    full_static: str | None = None
    """The best static plan that runs the whole horizon (:func:`pick_full_static`)."""
    constant_ctrl: float | None = None
    """The ctrl score of a constant prediction (the best single label; :func:`kd_backend.metrics.constant_score`
    on ctrl's labels): a reference at or below it means the student learned nothing and the ranking is noise."""


def _constant_ctrl(env: DistillationEnv) -> float | None:
    """The ctrl score of a constant prediction on the env's task (None for a backend without a task)."""
    task = getattr(env.distiller, "task", None)
    return None if task is None else constant_score(task.spec, np.asarray(task.ctrl.labels))


def _run(
    env: DistillationEnv, controllers: Mapping[str, Controller], seeds: Sequence[int], cost: PhaseCost,
    seed_major: bool, progress: Any = None, prior: Mapping[str, Sequence[EpisodeRecord]] | None = None,
) -> list[EpisodeRecord]:
    """Every controller on every seed; ``seed_major``: all controllers per seed (branch sharing).
    ``prior``: records to use instead of running, by controller (see :func:`reusable_records`)."""
    prior = prior or {}
    reused = [r for name in controllers if name in prior for r in prior[name] if r.seed in seeds]
    have = {(r.controller, r.seed) for r in reused}
    pairs = [(n, s) for s in seeds for n in controllers] if seed_major else [(n, s) for n in controllers for s in seeds]
    pairs = [(n, s) for n, s in pairs if (n, s) not in have]
    if progress is not None and reused:
        progress.update(len(reused))
    hits0 = env.branches.hits if env.branches is not None else 0
    trained0, cpu0, wall0 = env.compute_trained, time.process_time(), time.perf_counter()
    records = list(reused)
    for name, seed in pairs:
        records.extend(evaluate_controller(env, controllers[name], [seed], deterministic=True, name=name))
        if progress is not None:
            progress.update(1)
    cost.episodes += len(pairs)
    cost.episodes_reused += len(reused)
    cost.compute_reused += sum(r.total_compute for r in reused)
    cost.decisions += len(pairs) * env.steps_per_episode
    cost.decisions_replayed += (env.branches.hits if env.branches is not None else 0) - hits0
    cost.epochs_trained += env.compute_trained - trained0
    cost.cpu_seconds += time.process_time() - cpu0
    cost.wall_seconds += time.perf_counter() - wall0
    order = {n: i for i, n in enumerate(controllers)}
    return sorted(records, key=lambda r: (order[r.controller], seeds.index(r.seed)))


def reusable_records(
    prior: Sequence[EpisodeRecord], controllers: Mapping[str, Controller], seeds: Sequence[int],
    plans: Mapping[str, Sequence[EpochPlan]] | None = None, names: Collection[str] = (),
) -> dict[str, list[EpisodeRecord]]:
    """The earlier episodes that may stand in for running ``controllers`` on ``seeds``.

    A schedule of ``plans`` is reused seed by seed: an episode that applied exactly its plans (the
    record's meaning, not just its name) is determined by them, its seed and the env config, so
    the seeds ``prior`` holds are read and only the others run (more evaluation or selection seeds
    cost only the new ones). A built-in controller of ``names`` (the same in every run of the same
    env config) is reused whole or not at all: only if ``prior`` holds it on every seed, since
    ``random`` draws its actions from one generator across its episodes. Anything else (a
    closed-loop policy file, which may have changed under its name) runs again.

    :return: by controller, the records to read (only the seeds held, in ``seeds`` order).
    """
    plans = plans or {}
    by_name = _by_controller(prior)
    out = {}
    for name in controllers:
        got = {r.seed: r for r in by_name.get(name, []) if r.seed in seeds}
        if name in plans:
            want = list(plans[name])
            got = {s: r for s, r in got.items() if _plans_of(r) == want}
        elif name not in names or set(got) != set(seeds):
            continue
        if got:
            out[name] = [got[s] for s in seeds if s in got]
    return out


def _plans_of(record: EpisodeRecord) -> list[EpochPlan] | None:
    """The plans an episode applied, parsed (a field added to ``EpochPlan`` since the record was
    written takes its default, so older records keep their meaning); None if one no longer parses."""
    try:
        return [EpochPlan.from_dict(p) for p in record.schedule]
    except ConfigError:
        return None


def merge_costs(prior: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Phase costs of an earlier run (``protocol.json``'s ``costs``) plus this run's: what the episodes
    behind a report reusing that run's records cost in all (:func:`run_protocol`'s ``prior``).

    Of each earlier phase, only the share this run reused is charged: the reused episodes' compute
    over the compute that phase trained (at most all of it). So episodes the new report does not
    show (a policy file run again, heuristics left out with ``--no-heuristics``) are not counted, and
    a reused run's cost is not counted twice. The share is by compute, so it is an estimate where
    episodes of equal compute took unequal time.
    """
    out = {}
    for phase, cost in new.items():
        before = prior.get(phase, {})
        trained, reused = before.get("epochs_trained", 0.0), cost.get("compute_reused", 0.0)
        if trained > 0:
            share = min(1.0, reused / trained)
        else:  # the earlier phase trained nothing (all its decisions replayed or reused): count by episodes
            share = min(1.0, cost.get("episodes_reused", 0) / before["episodes"]) if before.get("episodes") else 0.0
        merged = {}
        for k, v in cost.items():
            if k in ("fraction_replayed", "episodes_reused", "compute_reused"):
                merged[k] = v
            elif k == "episodes":
                merged[k] = v + cost.get("episodes_reused", 0)
            elif k in ("decisions", "decisions_replayed"):
                merged[k] = v + round(share * before.get(k, 0))
            else:
                merged[k] = v + share * before.get(k, 0)
        merged["fraction_replayed"] = merged["decisions_replayed"] / merged["decisions"] if merged["decisions"] else 0.0
        out[phase] = merged
    return out


def read_records(path: str | Path) -> list[EpisodeRecord]:
    """Episode records from a ``selection.jsonl`` / ``evaluation.jsonl`` file.

    :raises ConfigError: a missing file or a line that is not an episode record (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} does not exist; give a folder written by compare.py (--protocol for selection.jsonl)")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(EpisodeRecord.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ConfigError) as e:
            raise ConfigError(
                f"{path} line {i} is not an episode record ({e}); give a file compare.py wrote, or run it again"
            ) from e
    return out


def run_protocol(
    env: DistillationEnv,
    candidates: Sequence[Candidate],
    controllers: Mapping[str, Controller],
    selection_seeds: Sequence[int],
    eval_seeds: Sequence[int],
    oracle: bool = True,
    branch_cache: int = 64,
    show_progress: bool = False,
    prior: Sequence[EpisodeRecord] = (),
    reuse_names: Collection[str] = (),
) -> ProtocolResult:
    """Select the reference on ctrl (selection seeds), then evaluate everything on fresh seeds.

    :param env: the env (its distiller, task and settings are shared; its own branch cache and
        ``report_dev`` are not used: the protocol builds a sealed selection env and an eval env).
    :param candidates: see :func:`candidate_schedules` (at least one static one).
    :param controllers: further controllers evaluated on ``eval_seeds`` (paper heuristics, random,
        policies, schedules). One named like an evaluated candidate (every candidate with
        ``oracle``, else the reference and the best static plans) reuses that candidate's episodes.
    :param selection_seeds: seeds of the selection episodes.
    :param eval_seeds: seeds of the evaluation episodes (>= 2, disjoint from ``selection_seeds``).
    :param oracle: also evaluate every candidate on ``eval_seeds`` and report the dev-best (the
        oracle upper bound); False evaluates only the reference and the best static plans (the best,
        and the best that runs the whole horizon).
    :param branch_cache: epoch states kept for prefix sharing (0 = retrain every prefix).
    :param prior: episodes of an earlier run of the same env config (:func:`read_records`) taken
        instead of running them (see :func:`reusable_records`: schedules seed by seed, built-in
        controllers only if held on every seed), so adding a controller, the oracle, or seeds to a
        finished protocol runs only what is new. The caller checks that the env configs match.
    :param reuse_names: controllers of ``controllers`` that ``prior`` may stand in for by name
        (built-in baselines); candidates and open-loop schedules (:class:`ScheduleController`, e.g. a
        ``schedule.json``) are matched by their plans.
    :raises ConfigError: overlapping or too few seeds, duplicate names, no static candidate.
    """
    sel_seeds, ev_seeds = tuple(int(s) for s in selection_seeds), tuple(int(s) for s in eval_seeds)
    if not sel_seeds:
        raise ConfigError("the protocol needs at least one selection seed")
    if len(set(ev_seeds)) < 2 or len(set(ev_seeds)) != len(ev_seeds):
        raise ConfigError(f"eval_seeds={list(ev_seeds)} must be >= 2 distinct seeds (a standard error needs two)")
    overlap = sorted(set(sel_seeds) & set(ev_seeds))
    if overlap:
        raise ConfigError(
            f"seeds {overlap} are both selection and evaluation seeds; the reference must be chosen on seeds "
            "it is not evaluated on: pass disjoint --selection-seeds and --seeds"
        )
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ConfigError(f"candidate names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    if not any(c.kind == "static" for c in candidates):
        raise ConfigError("the candidates hold no static plan; the best static plan is part of the report")
    for c in candidates:
        if not c.controller().fits(env.steps_per_episode):
            raise ConfigError(f"candidate {c.name!r} has {len(c.plans)} plans; an episode has {env.steps_per_episode} "
                              "(a shorter candidate must end in a final plan)")
    schedules = {c.name: c.controller() for c in candidates}
    base = env.config.replace(branch_cache=branch_cache)
    select_env = DistillationEnv(base.replace(report_dev=False), distiller=env.distiller)
    eval_env = DistillationEnv(base.replace(report_dev=True), distiller=env.distiller)
    # How many episodes the evaluation runs (without the oracle: the reference and the best static plan,
    # one or two; controllers that are candidates reuse their runs) is known only after selection.
    total = len(candidates) * (len(sel_seeds) + (len(ev_seeds) if oracle else 0)) + len(controllers) * len(ev_seeds)
    from tqdm.auto import tqdm

    costs = {"selection": PhaseCost(), "candidates_eval": PhaseCost(), "controllers_eval": PhaseCost()}
    with tqdm(total=total, desc="protocol", unit="episode", disable=not show_progress, dynamic_ncols=True) as bar:
        plans = {c.name: c.plans for c in candidates}
        with dev_sealed(env.distiller):
            selection_records = _run(
                select_env, schedules, sel_seeds, costs["selection"], seed_major=True, progress=bar,
                prior=reusable_records(prior, schedules, sel_seeds, plans),
            )
        table = selection_table(candidates, selection_records)
        reference, best_static = pick_reference(table), pick_reference(table, "static")
        full_static = pick_full_static(candidates, table)
        chosen = schedules if oracle else {n: schedules[n] for n in dict.fromkeys((reference, best_static, full_static))}
        extras = {n: c for n, c in controllers.items() if n not in chosen}  # a candidate's runs are reused
        bar.total = len(candidates) * len(sel_seeds) + (len(chosen) + len(extras)) * len(ev_seeds)
        bar.refresh()
        eval_records = _run(
            eval_env, chosen, ev_seeds, costs["candidates_eval"], seed_major=True, progress=bar,
            prior=reusable_records(prior, chosen, ev_seeds, plans),
        )
        open_loop = {n: c.plans for n, c in extras.items() if isinstance(c, ScheduleController)}
        eval_records += _run(
            eval_env, extras, ev_seeds, costs["controllers_eval"], seed_major=False, progress=bar,
            prior=reusable_records(prior, extras, ev_seeds, plans=open_loop, names=reuse_names),
        )
    oracle_name = pick_oracle(eval_records, list(schedules)) if oracle else None
    roles: dict[str, list[str]] = {}
    roles.setdefault(reference, []).append(REFERENCE_ROLE)
    roles.setdefault(best_static, []).append(BEST_STATIC_ROLE)
    roles.setdefault(full_static, []).append(FULL_STATIC_ROLE)
    if oracle_name is not None:
        roles.setdefault(oracle_name, []).append(ORACLE_ROLE)
    for n in controllers:
        roles.setdefault(n, []).append("controller")
    rows = report_rows(eval_records, roles, reference, best_static, full_static)
    return ProtocolResult(
        candidates=list(candidates), selection=table, reference=reference, best_static=best_static,
        oracle=oracle_name, rows=rows, selection_records=selection_records, eval_records=eval_records,
        selection_seeds=sel_seeds, eval_seeds=ev_seeds,
        costs={k: v.to_dict() for k, v in costs.items()}, budget_best=budget_best(table, reference, best_static),
        full_static=full_static,
        constant_ctrl=_constant_ctrl(env),
    )


# ---------------------------------------------------------------------------------------------- output
def _short_role(role: str) -> str:
    """A row's role for the printed table: the names without how each was chosen, which the lines
    under the table and ``protocol.csv`` give."""
    for long, short in _SHORT_ROLES.items():
        role = role.replace(long, short)
    return role


def format_protocol(result: ProtocolResult) -> str:
    """The report as text: rows, then the reference, the search cost, the target and the budget line.
    The columns against the best full-horizon static plan show only where it differs from the best
    static plan (``protocol.csv`` has them always)."""
    both = result.full_static not in (None, result.best_static)
    header = ("controller", "dev ± SE", "ctrl ± SE", "compute", "Δdev vs ref (paired)", "compute / best static",
              "target", *(("/ full-horizon static", "target vs full-horizon static") if both else ()), "role")
    lines = [
        (
            r["controller"], f"{100 * r['dev_score']:.1f} ± {100 * r['dev_score_se']:.1f}",
            f"{100 * r['ctrl_score']:.1f} ± {100 * r['ctrl_score_se']:.1f}", f"{r['compute']:.2f}",
            f"{100 * r['dev_diff_vs_reference']:+.1f} ± {100 * r['dev_diff_vs_reference_se']:.1f}",
            f"{r['compute_ratio_vs_best_static']:.2f}", r["target"],
            *((f"{r['compute_ratio_vs_full_static']:.2f}", r["target_vs_full_static"]) if both else ()),
            _short_role(r["role"]),
        )
        for r in result.rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    left = {0, 6, len(header) - 1} | ({8} if both else set())
    fmt = "  ".join(f"{{:{'<' if i in left else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*line) for line in lines)]
    sel = result.costs["selection"]
    out.append(
        f"scores in points over evaluation seeds {list(result.eval_seeds)}; compute in plain full-data student epochs. "
        f"Reference {result.reference!r} chosen on ctrl over selection seeds {list(result.selection_seeds)} "
        f"among {len(result.candidates)} candidates; grid search cost: {sel['episodes']} episodes, "
        f"{sel['epochs_trained']:.1f} plain epochs trained ({100 * sel['fraction_replayed']:.0f}% of decisions replayed "
        f"from branches), {sel['cpu_seconds']:.0f} CPU s."
    )
    if result.constant_ctrl is not None:
        ref_ctrl = next(r["ctrl_score"] for r in result.selection if r["candidate"] == result.reference)
        learned_nothing = no_better_than_constant(ref_ctrl, result.constant_ctrl)
        out.append(
            f"A constant prediction scores {100 * result.constant_ctrl:.1f} on ctrl; the reference "
            f"{100 * ref_ctrl:.1f} (selection seeds)."
            + (" The reference is no better than a constant: the student has not learned this task, so the "
               "candidates' ranking and the verdicts below are noise." if learned_nothing else "")
        )
    out.append(
        f"target: the reference's dev (paired, within one SE) at <= {TARGET_SHARE:g} of the best static plan's "
        "compute and <= the reference's, or more than 2 SE above it at the reference's compute. "
        + (f"The best static plan {result.best_static!r} stops early; the best full-horizon one (the plan every "
           f"epoch) is {result.full_static!r}." if both else "The best static plan runs the full horizon.")
    )
    b = result.budget_best
    if b is None:
        out.append(f"No candidate costs <= {TARGET_SHARE:g} of the best static plan's compute.")
    else:
        out.append(
            f"At that budget (<= {b['budget']:.2f} on the selection seeds) the menu's ctrl-best candidate is "
            f"{b['candidate']!r}: ctrl {100 * b['ctrl_score']:.1f} ± {100 * b['ctrl_score_se']:.1f} @ {b['compute']:.2f}, "
            f"{100 * b['ctrl_gap_vs_reference']:+.1f} points against the reference's ctrl (selection seeds)."
        )
    if result.oracle is not None:
        out.append(f"The oracle ({result.oracle!r}) is chosen on the evaluation seeds' dev scores: an upper bound only.")
    return "\n".join(out)


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_frontier(result: ProtocolResult, path: str | Path) -> Path:
    """Dev score vs compute on the evaluation seeds: every evaluated candidate (grey), their
    Pareto frontier, and each report row with its SE bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups = _by_controller(result.eval_records)
    points = []
    for c in result.candidates:
        if c.name in groups:
            g = groups[c.name]
            points.append((mean_se([r.total_compute for r in g])[0], 100 * mean_se([r.final_dev_score for r in g])[0]))
    if points:
        xs, ys = zip(*points, strict=True)
        ax.scatter(xs, ys, color="0.6", s=14, label="candidates (static and grid)", zorder=1)
        frontier, best = [], -math.inf
        for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
            if y > best:
                frontier.append((x, y))
                best = y
        ax.step(*zip(*frontier, strict=True), where="post", color="0.4", linewidth=1, label="candidates' frontier")
    markers = "osD^v<>phX*"
    for i, r in enumerate(result.rows):
        ax.errorbar(
            r["compute"], 100 * r["dev_score"], yerr=100 * np.nan_to_num(r["dev_score_se"]), color=f"C{i % 10}",
            marker=markers[i % len(markers)], markersize=9, markerfacecolor="none", markeredgewidth=2, capsize=3,
            linestyle="none", label=f"{r['controller']} ({r['role'].split(' (')[0]})", zorder=3,
        )
    if result.budget_best is not None:
        ax.axvline(result.budget_best["budget"], color="0.3", linestyle=":", linewidth=1,
                   label=f"target budget ({TARGET_SHARE:g} of the best static plan)")
    ax.set_xlabel("compute per KD run (plain full-data epochs of the student)")
    ax.set_ylabel("final dev score (points, mean ± SE over evaluation seeds)")
    ax.set_title(f"dev vs compute; reference {result.reference} chosen on ctrl")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=7, frameon=False)
    return save_figure(fig, path)


def write_protocol(out_dir: str | Path, result: ProtocolResult, **metadata: Any) -> list[Path]:
    """Write ``protocol.csv`` (the report), ``selection.csv`` (every candidate's ctrl score and compute),
    ``protocol.json`` (choices, seeds, costs, rows, selection table, ``metadata``), ``protocol.png``
    (the frontier), ``selection.jsonl`` and ``evaluation.jsonl`` (every episode)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "protocol.csv", result.rows)
    _write_csv(out / "selection.csv", result.selection)
    plans = {c.name: [p.to_dict() for p in c.plans] for c in result.candidates}
    atomic_write_json(out / "protocol.json", {
        "reference": result.reference, "reference_plans": plans[result.reference],
        "best_static": result.best_static, "full_horizon_static": result.full_static, "oracle": result.oracle,
        "oracle_is_upper_bound": True,
        "selection_seeds": list(result.selection_seeds), "eval_seeds": list(result.eval_seeds),
        "chosen_by": "mean final ctrl score over the selection seeds (dev never read during selection)",
        "target_share": TARGET_SHARE, "budget_best": result.budget_best, "constant_ctrl_score": result.constant_ctrl,
        "costs": result.costs, "rows": result.rows, "selection": result.selection, **metadata,
    })
    for name, records in (("selection.jsonl", result.selection_records), ("evaluation.jsonl", result.eval_records)):
        atomic_write_text(out / name, "".join(json.dumps(r.to_dict()) + "\n" for r in records))
    plot_frontier(result, out / "protocol.png")
    return [out / n for n in ("protocol.csv", "selection.csv", "protocol.json", "protocol.png")]
