"""What a task is: its text columns, labels and metrics (:class:`TaskSpec`), and the GLUE registry.

Label ids and column names follow the Hugging Face hub's ``nyu-mll/glue`` encoding exactly (for
example RTE and QNLI: entailment=0, not_entailment=1; MRPC and QQP: 1 = paraphrase), so a task
loaded from GLUE's own TSV files and the same task loaded from the hub give identical splits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kd_backend.errors import ConfigError, UnknownTaskError

METRIC_NAMES = ("accuracy", "f1", "matthews", "pearson", "spearman")
"""Every metric :func:`kd_backend.metrics.compute_metrics` knows."""
_REGRESSION_METRICS = frozenset({"pearson", "spearman"})


@dataclass(frozen=True)
class TaskSpec:
    """The static description of a text-classification (or regression) task."""

    name: str
    """Canonical name: ``glue/<task>`` (e.g. ``glue/sst2``), ``synthetic`` or ``custom``."""
    text_columns: tuple[str, ...]
    """One column (single sentence) or two (sentence pair), named as in the source data set."""
    label_column: str
    """Column holding the gold label."""
    num_labels: int
    """Number of classes; 1 for regression."""
    label_names: tuple[str, ...] | None
    """Class names in id order (``label_names[i]`` is class ``i``); None for regression."""
    is_regression: bool
    """Whether the label is a real number (STS-B) rather than a class id."""
    metrics: tuple[str, ...]
    """Metrics reported for the task, among :data:`METRIC_NAMES`; the main score is their mean."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "text_columns", tuple(self.text_columns))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        if self.label_names is not None:
            object.__setattr__(self, "label_names", tuple(str(n) for n in self.label_names))
        if not self.name:
            raise ConfigError("TaskSpec.name must be a non-empty string")
        if len(self.text_columns) not in (1, 2) or not all(self.text_columns):
            raise ConfigError(
                f"TaskSpec.text_columns={self.text_columns!r} must name one column (single sentence) "
                "or two (sentence pair)"
            )
        if not self.metrics or any(m not in METRIC_NAMES for m in self.metrics):
            raise ConfigError(f"TaskSpec.metrics={self.metrics!r} must be a non-empty subset of {list(METRIC_NAMES)}")
        if self.is_regression:
            if self.num_labels != 1 or self.label_names is not None:
                raise ConfigError(
                    f"TaskSpec {self.name!r}: a regression task needs num_labels=1 and label_names=None, "
                    f"got num_labels={self.num_labels!r}, label_names={self.label_names!r}"
                )
            if not set(self.metrics) <= _REGRESSION_METRICS:
                raise ConfigError(f"TaskSpec {self.name!r}: a regression task can only report {sorted(_REGRESSION_METRICS)}")
        else:
            if not isinstance(self.num_labels, int) or self.num_labels < 2:
                raise ConfigError(f"TaskSpec {self.name!r}: num_labels={self.num_labels!r} must be an integer >= 2")
            if self.label_names is not None and len(self.label_names) != self.num_labels:
                raise ConfigError(
                    f"TaskSpec {self.name!r}: {len(self.label_names)} label_names for num_labels={self.num_labels}"
                )
            if set(self.metrics) & _REGRESSION_METRICS:
                raise ConfigError(f"TaskSpec {self.name!r}: a classification task cannot report {sorted(_REGRESSION_METRICS)}")

    @property
    def is_pair(self) -> bool:
        """Whether instances are sentence pairs."""
        return len(self.text_columns) == 2


def _glue(name: str, text: tuple[str, ...], labels: tuple[str, ...] | None, metrics: tuple[str, ...]) -> TaskSpec:
    regression = labels is None
    return TaskSpec(
        name=f"glue/{name}",
        text_columns=text,
        label_column="label",
        num_labels=1 if regression else len(labels),
        label_names=labels,
        is_regression=regression,
        metrics=metrics,
    )


GLUE_TASKS: dict[str, TaskSpec] = {
    "cola": _glue("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews",)),
    "sst2": _glue("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
    "mrpc": _glue("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy")),
    "qqp": _glue("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy")),
    "stsb": _glue("stsb", ("sentence1", "sentence2"), None, ("pearson", "spearman")),
    "mnli": _glue("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",)),
    "qnli": _glue("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",)),
    "rte": _glue("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",)),
    "wnli": _glue("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",)),
}
"""The nine GLUE tasks by short name, with the hub's column names and label order."""

SYNTHETIC_TASK = TaskSpec(
    name="synthetic",
    text_columns=("sentence",),
    label_column="label",
    num_labels=2,
    label_names=("negative", "positive"),
    is_regression=False,
    metrics=("accuracy",),
)
"""The built-in compositional sentiment task of :mod:`kd_backend.synthetic`."""


def task_names() -> tuple[str, ...]:
    """Every name :func:`get_task_spec` accepts, in canonical form."""
    return (*(spec.name for spec in GLUE_TASKS.values()), SYNTHETIC_TASK.name)


def glue_key(name: str) -> str | None:
    """The short GLUE name (``sst2``) for any accepted spelling, or None if ``name`` is not GLUE.

    Accepts ``sst2``, ``glue/sst2``, ``SST-2``, ``glue/STS-B``, ``sts_b`` ... case-insensitively.
    """
    key = name.strip().lower()
    key = key.removeprefix("glue/").removeprefix("glue-")
    key = re.sub(r"[-_\s]", "", key)
    return key if key in GLUE_TASKS else None


def get_task_spec(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of a GLUE task or of ``synthetic``.

    :param name: a GLUE task in any accepted spelling (``sst2``, ``glue/sst2``, ``SST-2``) or
        ``synthetic``. Custom files get their spec from :func:`kd_backend.data.load_task`.
    :raises UnknownTaskError: for any other name; the message lists the valid names.
    """
    key = glue_key(name)
    if key is not None:
        return GLUE_TASKS[key]
    if name.strip().lower() == SYNTHETIC_TASK.name:
        return SYNTHETIC_TASK
    raise UnknownTaskError(
        f"unknown task {name!r}; valid tasks are {list(task_names())} "
        "(short GLUE names such as 'sst2' or 'SST-2' also work; custom data is loaded from a "
        ".csv/.tsv/.json/.jsonl file by load_task)"
    )
