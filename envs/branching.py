"""Branching episodes: a bounded tree of epoch states, so episodes that share a prefix of plans
start from the stored state of that prefix instead of retraining it.

Seed semantics. A KD run owns its RNG (:class:`kd_backend.distiller.Distiller`): what it trains
depends only on the episode seed (the student's initialisation, data order, dropout and random
selection) and on the plans applied, never on what an agent draws in between. So the state after
the first t decisions of an episode is a function of ``(seed, plans[:t])`` for a given env (task,
teachers, student, optimisation settings), and that pair is the key here. An episode of seed s
whose first t plans equal a stored prefix of seed s continues from that prefix's state and gets,
on the CPU, bit for bit the student, stats and ctrl scores it would have got training the prefix
again (``tests/test_env.py``); prefixes of different seeds never share a state. The key holds the
plans *as applied* (decoded actions), so two actions that decode to the same plan share a branch.

States of the last decision of an episode are not stored (no episode continues from them), and
the cache belongs to one env and its distiller: a changed task, model or optimisation setting
means a new env, hence a new cache. On CUDA, training is not bit-reproducible to begin with; the
restored state is still exactly the stored one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from kd_backend.distiller import RunState
from kd_backend.errors import ConfigError
from kd_backend.plan import EpochPlan, EpochStats, EvalStats

BranchKey = tuple[int, tuple[EpochPlan, ...]]
"""``(episode seed, plans applied so far)``."""


@dataclass(frozen=True)
class Branch:
    """What a decision left behind: the run state after it, its training stats and the ctrl evaluation after it."""

    state: RunState
    stats: EpochStats
    ctrl: EvalStats


class BranchCache:
    """A least-recently-used store of :class:`Branch` es keyed by ``(seed, plans so far)``.

    :param capacity: most states kept (each holds the student, projections and optimizer moments:
        about 3x the student's parameters, on the run's device).
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ConfigError(f"BranchCache capacity={capacity!r} must be an integer >= 1 (0 turns branching off in EnvConfig)")
        self.capacity = capacity
        self._store: OrderedDict[BranchKey, Branch] = OrderedDict()
        self.lookups = 0
        self.hits = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: BranchKey) -> Branch | None:
        """The branch of ``key`` (marked as recently used), or None; counts the lookup."""
        self.lookups += 1
        branch = self._store.get(key)
        if branch is not None:
            self.hits += 1
            self._store.move_to_end(key)
        return branch

    def put(self, key: BranchKey, branch: Branch) -> None:
        """Store a branch, evicting the least recently used one beyond ``capacity``."""
        self._store[key] = branch
        self._store.move_to_end(key)
        while len(self._store) > self.capacity:
            self._store.popitem(last=False)
            self.evictions += 1

    def clear(self) -> None:
        """Drop every stored state (the counters stay)."""
        self._store.clear()

    def stats(self) -> dict[str, Any]:
        """Lookups, hits (decisions not retrained), hit rate, stored states and evictions."""
        return {
            "lookups": self.lookups, "hits": self.hits, "hit_rate": self.hits / self.lookups if self.lookups else 0.0,
            "stored": len(self._store), "evictions": self.evictions, "capacity": self.capacity,
        }
