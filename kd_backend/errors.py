"""Exceptions raised by DynaKD. Every message names the bad value and how to fix it."""

from __future__ import annotations


class DynaKDError(Exception):
    """Base class of every error DynaKD raises on purpose."""


class ConfigError(DynaKDError, ValueError):
    """An invalid option, plan field, action or configuration value."""


class UnknownTaskError(ConfigError, KeyError):
    """A task name that is neither a GLUE task, ``synthetic`` nor a custom file."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class DataError(DynaKDError):
    """A missing data file, a missing column or labels that cannot be parsed."""


class ModelError(DynaKDError):
    """A model that cannot be loaded or does not fit the task (labels, layers, widths)."""


class HubOfflineError(ModelError):
    """A Hugging Face hub id was requested but the hub cannot be reached."""


class CacheError(DynaKDError):
    """A teacher-output cache file that is truncated, corrupt or inconsistent."""


class NonFiniteLossError(DynaKDError, FloatingPointError):
    """A NaN or infinite loss; the message names the step and every loss term."""
