"""Controllers of the KD run: SB3 learners (:mod:`agents.factory`), baselines and the shared
evaluation loop (:mod:`agents.baselines`), and the logging/checkpoint callback (:mod:`agents.callbacks`)."""

from agents.baselines import (
    Controller, EpisodeRecord, PaperHeuristic, RandomController, ScheduleController, StaticController, StepRecord,
    evaluate_controller,
)
from agents.callbacks import EpisodeLogger, read_episodes, truncate_episodes
from agents.protocol import (
    Candidate, ProtocolResult, candidate_schedules, dev_sealed, format_protocol, menu_plans, merge_costs,
    paired_difference, read_records, reusable_records, run_protocol, write_protocol,
)
from agents.factory import ALGORITHMS, compatible_algorithms, default_hyperparameters, load_agent, make_agent

__all__ = [
    "ALGORITHMS", "Candidate", "Controller", "ProtocolResult", "candidate_schedules", "dev_sealed",
    "format_protocol", "menu_plans", "merge_costs", "paired_difference", "read_records", "reusable_records", "run_protocol", "write_protocol", "EpisodeLogger", "EpisodeRecord", "PaperHeuristic", "RandomController",
    "ScheduleController", "StaticController", "StepRecord", "compatible_algorithms", "default_hyperparameters",
    "evaluate_controller", "load_agent", "make_agent", "read_episodes", "truncate_episodes",
]
