"""Controllers of the KD run and the workflows around them.

* controllers: SB3 learners (:mod:`agents.factory`), baselines and the shared evaluation loop
  (:mod:`agents.baselines`), the tree search (:mod:`agents.search`), PBT (:mod:`agents.pbt`);
* the fair comparison (:mod:`agents.protocol`) and the logging/checkpoint callback (:mod:`agents.callbacks`);
* the jobs behind the scripts, as functions of their configs: :func:`learn_policy`, :func:`replay`,
  :func:`compare`, :func:`search_schedule`, :func:`pbt_schedule` (:mod:`agents.workflows`, configs in
  :mod:`agents.configs`, the one command-line stack in :mod:`agents.cli`).
"""

from agents.baselines import (
    Controller,
    EpisodeRecord,
    PaperHeuristic,
    RandomController,
    ScheduleController,
    StaticController,
    StepRecord,
    evaluate_controller,
)
from agents.callbacks import EpisodeLogger, read_episodes, truncate_episodes
from agents.configs import (
    CompareConfig,
    LearnConfig,
    PBTConfig,
    ReplayConfig,
    SearchConfig,
    default_env,
)
from agents.factory import (
    ALGORITHMS,
    compatible_algorithms,
    default_hyperparameters,
    load_agent,
    make_agent,
)
from agents.protocol import (
    Candidate,
    ProtocolResult,
    candidate_schedules,
    dev_sealed,
    format_protocol,
    menu_plans,
    merge_costs,
    paired_difference,
    read_records,
    reusable_records,
    run_protocol,
    write_protocol,
)
from agents.search import SearchResult, tree_search
from agents.workflows import (
    compare,
    learn_policy,
    pbt_schedule,
    replay,
    search_schedule,
)

__all__ = [
    "ALGORITHMS", "Candidate", "CompareConfig", "Controller", "EpisodeLogger", "EpisodeRecord", "LearnConfig",
    "PBTConfig", "PaperHeuristic", "ProtocolResult", "RandomController", "ReplayConfig", "ScheduleController",
    "SearchConfig", "SearchResult", "StaticController", "StepRecord", "candidate_schedules", "compare",
    "compatible_algorithms", "default_env", "default_hyperparameters", "dev_sealed", "evaluate_controller",
    "format_protocol", "learn_policy", "load_agent", "make_agent", "menu_plans", "merge_costs", "paired_difference",
    "pbt_schedule", "read_episodes", "read_records", "replay", "reusable_records", "run_protocol", "search_schedule",
    "tree_search", "truncate_episodes", "write_protocol",
]
