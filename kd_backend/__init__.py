"""DynaKD's KD engine: data, models, teacher caches, losses, the paper's mechanisms and the distiller.

The backend knows nothing of Gymnasium or stable-baselines3: a KD run is a :class:`Distiller`
driven by one :class:`EpochPlan` per epoch (a static schedule is just the same plan every epoch).
"""

from kd_backend.config import BackendConfig, DistillerConfig
from kd_backend.data import TaskData, TextSplit, load_task
from kd_backend.distiller import Distiller, Teacher
from kd_backend.errors import (
    CacheError,
    ConfigError,
    DataError,
    DynaKDError,
    HubOfflineError,
    ModelError,
    NonFiniteLossError,
    UnknownTaskError,
)
from kd_backend.pipeline import build_distiller, fine_tune, load_task_data
from kd_backend.plan import EpochPlan, EpochStats, EvalStats

__all__ = [
    "BackendConfig", "CacheError", "ConfigError", "DataError", "Distiller", "DistillerConfig", "DynaKDError",
    "EpochPlan", "EpochStats", "EvalStats", "HubOfflineError", "ModelError", "NonFiniteLossError", "TaskData",
    "Teacher", "TextSplit", "UnknownTaskError", "build_distiller", "fine_tune", "load_task", "load_task_data",
]
