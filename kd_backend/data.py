"""Loading a task's text and labels: GLUE (local TSV or the hub), the synthetic task, custom files.

Every task comes out as a :class:`TaskData` with three splits: ``train``, ``ctrl`` (a seeded slice
held out of the training data, for the controller's observations and rewards) and ``dev`` (the
official dev set). :func:`load_task` checks names, files and columns before it parses anything.

GLUE's TSV files and the hub's ``nyu-mll/glue`` go through the same ``datasets.Dataset`` and the
same conversion, with the hub's column names and label ids, so both sources give identical splits.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np

from kd_backend.errors import ConfigError, DataError
from kd_backend.splits import UNLABELLED, TextSplit  # noqa: F401 (UNLABELLED: re-exported, data's public name)
from kd_backend.synthetic import (
    SyntheticConfig,
    make_synthetic_task,
    make_synthetic_transfer,
)
from kd_backend.tasks import (
    GLUE_TASKS,
    SYNTHETIC_TASK,
    TaskSpec,
    get_task_spec,
    glue_key,
)

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

SPLITS = ("train", "ctrl", "dev")
"""The splits of every :class:`TaskData`."""
CUSTOM_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
"""File types :func:`load_task` reads as custom data."""
TEXT_COLUMN_CANDIDATES = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("sentence",),
    ("text",),
)
"""Text columns tried, in this order, when a custom file is loaded without ``text_columns``."""
HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True, eq=False)
class TaskData:
    """A task's spec and its three splits; validated against the spec on construction."""

    spec: TaskSpec
    train: TextSplit
    """Training data (without the ``ctrl`` rows). Rows without a gold label (:attr:`TextSplit.labelled`
    false) form a *transfer set*: they are trained on with the teachers' targets only."""
    ctrl: TextSplit
    """A seeded slice held out of the (labelled) training data, disjoint from ``train``."""
    dev: TextSplit
    """The official dev set (MNLI: dev_matched)."""

    def __post_init__(self) -> None:
        for name in SPLITS:
            split = getattr(self, name)
            if len(split) == 0:
                raise DataError(f"TaskData {self.spec.name!r}: the {name} split is empty")
            if split.is_pair != self.spec.is_pair:
                raise DataError(
                    f"TaskData {self.spec.name!r}: the {name} split has {1 + split.is_pair} text column(s), "
                    f"the spec has {len(self.spec.text_columns)} ({list(self.spec.text_columns)})"
                )
            if split.is_regression != self.spec.is_regression:
                kind = "float (regression)" if split.is_regression else "integer"
                raise DataError(f"TaskData {self.spec.name!r}: the {name} split has {kind} labels, which the spec does not expect")
            labelled = split.labelled
            if name != "train" and not labelled.all():
                raise DataError(f"TaskData {self.spec.name!r}: the {name} split has unlabelled rows; only train may")
            if not labelled.any():
                raise DataError(f"TaskData {self.spec.name!r}: the {name} split has no labelled row")
            if not self.spec.is_regression:
                bad = ((split.labels < 0) | (split.labels >= self.spec.num_labels)) & labelled
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise DataError(
                        f"TaskData {self.spec.name!r}: {name} label {int(split.labels[i])} at index {i} is not a "
                        f"class id in [0, {self.spec.num_labels})"
                    )

    def split(self, name: str) -> TextSplit:
        """The split called ``name`` (``train``, ``ctrl`` or ``dev``)."""
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; valid splits are {list(SPLITS)}")
        return getattr(self, name)

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 hex digest of the spec's labels and the three splits."""
        h = hashlib.sha256(repr((self.spec.name, self.spec.label_names, self.spec.is_regression)).encode())
        for name in SPLITS:
            h.update(f"|{name}:{self.split(name).fingerprint}".encode())
        return h.hexdigest()


# --------------------------------------------------------------------------------------- GLUE


@dataclass(frozen=True)
class _GlueFiles:
    """Where a GLUE task lives in GLUE's own TSV layout and on the hub."""

    folder: str
    columns: tuple[str | int, ...]
    """The TSV columns holding the texts then the label: header names, or positions without header."""
    dev_file: str = "dev.tsv"
    hub_dev_split: str = "validation"


_GLUE_FILES = {
    "cola": _GlueFiles("CoLA", (3, 1)),  # no header row: source, label, original label, sentence
    "sst2": _GlueFiles("SST-2", ("sentence", "label")),
    "mrpc": _GlueFiles("MRPC", ("#1 String", "#2 String", "Quality")),
    "qqp": _GlueFiles("QQP", ("question1", "question2", "is_duplicate")),
    "stsb": _GlueFiles("STS-B", ("sentence1", "sentence2", "score")),
    "mnli": _GlueFiles("MNLI", ("sentence1", "sentence2", "gold_label"), "dev_matched.tsv", "validation_matched"),
    "qnli": _GlueFiles("QNLI", ("question", "sentence", "label")),
    "rte": _GlueFiles("RTE", ("sentence1", "sentence2", "label")),
    "wnli": _GlueFiles("WNLI", ("sentence1", "sentence2", "label")),
}


def _hub_features(spec: TaskSpec) -> datasets.Features:
    from datasets import ClassLabel, Features, Value

    label = Value("float32") if spec.is_regression else ClassLabel(names=list(spec.label_names or ()))
    return Features({**{c: Value("string") for c in spec.text_columns}, spec.label_column: label})


def _glue_label(raw: str, spec: TaskSpec, where: str) -> int | float:
    """A GLUE TSV label as the hub encodes it: a class name or id, or a float score."""
    if spec.is_regression:
        try:
            value = float(raw)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(f"{where}: label {raw!r} is not a number; a regression score is expected")
        return value
    names = spec.label_names or ()
    if raw in names:
        return names.index(raw)
    if raw.isdigit() and int(raw) < len(names):
        return int(raw)
    raise DataError(
        f"{where}: label {raw!r} is neither a class name {list(names)} nor an id in [0, {len(names)}); "
        "is the file from the right task?"
    )


def _read_glue_tsv(path: Path, key: str) -> datasets.Dataset:
    """Parse one GLUE TSV (quoting off: sentences hold unbalanced quotes) into a hub-shaped Dataset."""
    import pyarrow as pa
    from datasets import Dataset, DatasetInfo

    spec, files = GLUE_TASKS[key], _GLUE_FILES[key]
    with path.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's byte-order mark
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    first_line = 1
    if isinstance(files.columns[0], str):
        header, rows, first_line = rows[0] if rows else [], rows[1:], 2
        missing = [c for c in files.columns if c not in header]
        if missing:
            raise DataError(
                f"{path} has no column(s) {missing}; its header holds {header}. Is it GLUE's "
                f"{files.folder} file, byte for byte?"
            )
        positions = [header.index(c) for c in files.columns]
        width = len(header)
    else:
        positions = list(files.columns)
        width = len(rows[0]) if rows else 0
        if rows and width <= max(positions):
            raise DataError(f"{path} has {width} columns; GLUE's {files.folder} files have more than {max(positions)}")
    *text_pos, label_pos = positions
    texts: list[list[str]] = [[] for _ in text_pos]
    labels: list[int | float] = []
    for line, row in enumerate(rows, start=first_line):
        if not row:
            continue
        if len(row) != width:
            raise DataError(
                f"{path}, line {line}: {len(row)} tab-separated fields, expected {width}; "
                "the file must be read with quoting off and contain no stray tabs"
            )
        for column, pos in zip(texts, text_pos):
            column.append(row[pos])
        labels.append(_glue_label(row[label_pos], spec, f"{path}, line {line}"))
    data = {**dict(zip(spec.text_columns, texts)), spec.label_column: labels}
    features = _hub_features(spec)  # built as an Arrow table: Dataset.from_dict encodes row by row, 10x slower
    return Dataset(pa.Table.from_pydict(data, schema=features.arrow_schema), info=DatasetInfo(features=features))


def _split_from_dataset(ds: datasets.Dataset, spec: TaskSpec, source: str) -> TextSplit:
    """Convert a hub-shaped ``datasets.Dataset`` (local or downloaded) to a :class:`TextSplit`."""
    from datasets import ClassLabel

    needed = [*spec.text_columns, spec.label_column]
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(f"{source} has no column(s) {missing}; its columns are {ds.column_names}")
    feature = ds.features[spec.label_column]
    if isinstance(feature, ClassLabel) and tuple(feature.names) != spec.label_names:
        raise DataError(
            f"{source} encodes labels as {feature.names}, but DynaKD's {spec.name} expects {list(spec.label_names or ())}"
        )
    table = ds.with_format("arrow")[:]
    for column in needed:
        if table.column(column).null_count:
            raise DataError(f"{source}: column {column!r} has {table.column(column).null_count} missing values")
    texts = [tuple(table.column(c).to_pylist()) for c in spec.text_columns]
    labels = np.asarray(table.column(spec.label_column).to_numpy())
    labels = labels.astype(np.float32 if spec.is_regression else np.int64)
    return TextSplit(text_a=texts[0], text_b=texts[1] if spec.is_pair else None, labels=labels)


def _load_glue_local(key: str, data_dir: Path) -> tuple[TextSplit, TextSplit]:
    spec, files = GLUE_TASKS[key], _GLUE_FILES[key]
    if not data_dir.is_dir():
        raise DataError(
            f"data directory {data_dir} does not exist; pass --data-dir pointing at a folder in GLUE's own "
            f"layout (e.g. ../shared/data/glue, which holds {files.folder}/train.tsv)"
        )
    paths = (data_dir / files.folder / "train.tsv", data_dir / files.folder / files.dev_file)
    for path in paths:
        if not path.is_file():
            hint = " (data_dir should be the folder above the task folders)" if data_dir.name == files.folder else ""
            raise DataError(
                f"GLUE file {path} not found; {spec.name} needs {files.folder}/train.tsv and "
                f"{files.folder}/{files.dev_file} under the data directory {data_dir}{hint}"
            )
    train, dev = (_split_from_dataset(_read_glue_tsv(p, key), spec, str(p)) for p in paths)
    return train, dev


def _hub_offline() -> bool:
    flags = (os.environ.get(v, "").strip().upper() for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(flag in ("1", "ON", "YES", "TRUE") for flag in flags)


def _load_glue_hub(key: str) -> tuple[TextSplit, TextSplit]:
    spec, files = GLUE_TASKS[key], _GLUE_FILES[key]
    fix = (
        f"pass --data-dir (data_dir=...) pointing at a folder in GLUE's own TSV layout, e.g. "
        f"../shared/data/glue, which holds {files.folder}/train.tsv"
    )
    if _hub_offline():
        raise DataError(f"cannot load {spec.name} from the Hugging Face hub: the hub is unreachable (offline mode is set); {fix}")
    import datasets

    try:
        dd = datasets.load_dataset(HUB_DATASET, key)
    except ConnectionError as e:
        raise DataError(f"cannot load {spec.name} from the Hugging Face hub: the hub is unreachable ({e}); {fix}") from e
    source = f"{HUB_DATASET}/{key}"
    return (
        _split_from_dataset(dd["train"], spec, f"{source} train"),
        _split_from_dataset(dd[files.hub_dev_split], spec, f"{source} {files.hub_dev_split}"),
    )


# ------------------------------------------------------------------------------- custom files


def _read_records(path: Path) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """Read a .csv/.tsv/.json/.jsonl file: its column names, its rows and where each row is."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8-sig", newline="") as f:
            quoting = csv.QUOTE_NONE if suffix == ".tsv" else csv.QUOTE_MINIMAL
            reader = csv.reader(f, delimiter="\t" if suffix == ".tsv" else ",", quoting=quoting)
            header = next(reader, [])
            records, where = [], []
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}, line {reader.line_num}: {len(row)} fields, but the header has {len(header)}")
                records.append(dict(zip(header, row)))
                where.append(f"{path}, line {reader.line_num}")
        return header, records, where
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
        lines = False
    except json.JSONDecodeError:  # JSON lines (what datasets' to_json writes, whatever the suffix)
        lines = True
    if lines or suffix == ".jsonl":
        records, where = [], []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {n}: not valid JSON ({e})") from e
                where.append(f"{path}, line {n}")
    elif isinstance(data, list):
        records, where = data, [f"{path}, record {i}" for i in range(len(data))]
    elif isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        n = len(next(iter(data.values()), []))
        records = [{k: v[i] for k, v in data.items()} for i in range(n)]
        where = [f"{path}, record {i}" for i in range(n)]
    else:
        raise DataError(f"{path}: expected a list of records, a dict of columns or JSON lines")
    if not all(isinstance(r, dict) for r in records):
        raise DataError(f"{path}: every record must be a JSON object mapping column names to values")
    columns = list(dict.fromkeys(k for r in records for k in r))
    return columns, records, where


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _encode_labels(values: list[Any], where: list[str], source: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Labels as class ids (integers or strings, sorted) or as floats (non-integral numbers).

    :param where: where each value comes from (``<file>, line 7``), for error messages.
    :param source: the training file, for error messages.
    :return: ``(labels, label_names)``; ``label_names`` is None for regression.
    """
    for value, loc in zip(values, where):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{loc}: the label is empty; every row needs a label")
    numbers = [_as_number(v) for v in values]
    if any(x is not None and math.isfinite(x) and not x.is_integer() for x in numbers):
        for x, value, loc in zip(numbers, values, where):
            if x is None or not math.isfinite(x):
                raise DataError(
                    f"{loc}: label {value!r} is not a number, but other labels are real numbers (a regression "
                    "task); fix the row or use class names throughout"
                )
        return np.asarray(numbers, dtype=np.float32), None
    if all(x is not None and math.isfinite(x) for x in numbers):
        keys = [int(x) for x in numbers]
        classes = sorted(set(keys))
        names = tuple(str(c) for c in classes)
    else:
        keys = [str(v).strip() for v in values]
        classes = sorted(set(keys))
        names = tuple(classes)
    if len(classes) < 2:
        raise DataError(f"{source}: every label is {names[0]!r}; classification needs two or more classes")
    ids = {c: i for i, c in enumerate(classes)}
    return np.asarray([ids[k] for k in keys], dtype=np.int64), names


def _resolve_file(path: str | Path, role: str) -> Path:
    path = Path(path).expanduser()
    if path.suffix.lower() not in CUSTOM_SUFFIXES:
        raise DataError(f"{role} file {path} has an unsupported type; use one of {list(CUSTOM_SUFFIXES)}")
    if not path.is_file():
        raise DataError(f"{role} file {path} not found (resolved to {path.resolve()})")
    return path


def _load_custom(
    train_file: str | Path,
    dev_file: str | Path | None,
    text_columns: tuple[str, ...] | None,
    label_column: str,
    seed: int,
) -> tuple[TaskSpec, TextSplit, TextSplit]:
    paths = [_resolve_file(train_file, "train")] + ([_resolve_file(dev_file, "dev")] if dev_file is not None else [])
    tables = [_read_records(p) for p in paths]
    columns = tables[0][0]
    if text_columns is None:
        text_columns = next((c for c in TEXT_COLUMN_CANDIDATES if set(c) <= set(columns)), None)
        if text_columns is None:
            raise DataError(
                f"{paths[0]}: no text column found among {columns}; name it (one or two) with --text-columns "
                f"(text_columns in a config file), or call it one of {[c[0] for c in TEXT_COLUMN_CANDIDATES[-2:]]}"
            )
    for path, (present, records, where) in zip(paths, tables):
        if not records:
            raise DataError(f"{path} holds no rows")
        for column in (*text_columns, label_column):
            if column not in present:
                raise DataError(
                    f"{path} has no column {column!r}; its columns are {present}. Pass "
                    f"{'--label-column' if column == label_column else '--text-columns'} naming one of them "
                    f"({'label_column' if column == label_column else 'text_columns'} in a config file)"
                )
        for record, loc in zip(records, where):
            for column in text_columns:
                if not isinstance(record.get(column), str):
                    raise DataError(f"{loc}: text column {column!r} holds {record.get(column)!r}, not a string")
    raw = [r.get(label_column) for _, records, _ in tables for r in records]
    labels, names = _encode_labels(raw, [loc for _, _, where in tables for loc in where], paths[0])
    regression = names is None
    spec = TaskSpec(
        name="custom",
        text_columns=tuple(text_columns),
        label_column=label_column,
        num_labels=1 if regression else len(names),
        label_names=names,
        is_regression=regression,
        metrics=("pearson", "spearman") if regression else ("accuracy", "f1") if len(names) == 2 else ("accuracy",),
    )
    splits, start = [], 0
    for _, records, _ in tables:
        texts = [tuple(r[c] for r in records) for c in text_columns]
        splits.append(
            TextSplit(texts[0], texts[1] if len(texts) == 2 else None, labels[start : start + len(records)])
        )
        start += len(records)
    if len(splits) == 2:
        return spec, splits[0], splits[1]
    # No dev file: hold out a seeded 10% of the rows as dev.
    n = len(splits[0])
    if n < 3:
        raise DataError(f"{paths[0]} has {n} rows; without a dev file it needs at least 3 (train, ctrl and dev)")
    perm = np.random.default_rng([seed, 2]).permutation(n)
    n_dev = max(1, round(0.1 * n))
    return spec, splits[0].select(np.sort(perm[n_dev:])), splits[0].select(np.sort(perm[:n_dev]))


# -------------------------------------------------------------------------------------- entry


def _subset(split: TextSplit, limit: int | None, rng: np.random.Generator) -> TextSplit:
    if limit is None or limit >= len(split):
        return split
    return split.select(np.sort(rng.choice(len(split), size=limit, replace=False)))


MOJIBAKE = ("\ufffd", "Ã©", "Ã¨", "Ã¤", "Ã¶", "Ã¼", "Ã±", "â€™", "â€œ", "â€", "Â ")
"""Signs of text decoded in the wrong encoding: the replacement character, and UTF-8 read as Latin-1."""


def check_task_data(data: TaskData, source: str, custom: bool = True) -> list[str]:
    """Refuse data that parses but is not what the user thinks it is; return warnings for data that
    is probably wrong (each naming the split, the column and an example).

    Refused (custom files only, where the user named the columns): a label column that looks like
    free text (more distinct values than half its rows, and over 50), and a text column that looks
    like labels (at most 10 distinct values over 100 rows or more). Warned: texts with a
    replacement character or mojibake in 0.5% of the rows or more (a file not read in its encoding), empty texts, a class that
    dev holds but train does not, and dev sentences that also appear in train (a leak).

    :param source: the file or task the data came from, for messages.
    :param custom: whether the columns were named by the user (a custom file).
    :raises DataError: for a label or text column that is evidently the wrong column.
    """
    spec, warnings = data.spec, []
    columns = list(spec.text_columns) + [""] * 2
    if custom and not spec.is_regression:
        labels = data.train.labels[data.train.labelled]
        n, k = len(labels), spec.num_labels
        if k > 50 and k > n / 2:
            raise DataError(
                f"{source}: label column {spec.label_column!r} holds {k} distinct values among {n} rows, so it looks "
                f"like a text column, not labels (e.g. {spec.label_names[0]!r}); name the label column with "
                "--label-column (label_column in a config file)"
            )
    for split_name in ("train", "ctrl", "dev"):
        split = data.split(split_name)
        for column, texts in zip(columns, (split.text_a, split.text_b)):
            if texts is None or not texts:
                continue
            if custom and split_name == "train" and len(texts) >= 100 and len(set(texts)) <= 10:
                raise DataError(
                    f"{source}: text column {column!r} holds only {len(set(texts))} distinct values among "
                    f"{len(texts)} rows ({sorted(set(texts))[:5]}), so it looks like a label column, not text; "
                    "name the text column(s) with --text-columns (text_columns in a config file)"
                )
            broken = [i for i, t in enumerate(texts) if any(m in t for m in MOJIBAKE)]
            if len(broken) >= max(3, 0.005 * len(texts)):  # a stray row is in official files too (STS-B has one)
                warnings.append(
                    f"{source}: {len(broken)} of {len(texts)} {split_name} rows of column {column!r} hold a "
                    f"replacement character or mojibake (e.g. row {broken[0]}: {texts[broken[0]][:80]!r}): the file "
                    "was probably not written or read as UTF-8; re-save it as UTF-8"
                )
            empty = sum(1 for t in texts if not t.strip())
            if empty:
                warnings.append(f"{source}: {empty} of {len(texts)} {split_name} rows have an empty {column!r} text")
    if not spec.is_regression and spec.label_names:
        seen = set(np.unique(data.train.labels[data.train.labelled]).tolist())
        missing = sorted(set(np.unique(data.dev.labels).tolist()) - seen)
        if missing:
            warnings.append(
                f"{source}: dev holds class(es) {[spec.label_names[i] for i in missing]} that no training row has; "
                "the student cannot learn them (check the label column and the dev file)"
            )
    pairs = (lambda sp: set(zip(sp.text_a, sp.text_b or [""] * len(sp.text_a))))
    dev_pairs = pairs(data.dev)
    leaked = len(dev_pairs & pairs(data.train)) if dev_pairs else 0
    if dev_pairs and leaked > max(1, 0.05 * len(dev_pairs)):
        warnings.append(
            f"{source}: {leaked} of {len(dev_pairs)} distinct dev texts also appear in train ({100 * leaked / len(dev_pairs):.0f}%): "
            "dev scores will be optimistic; remove the overlap, or pass a dev file that does not share rows with train"
        )
    return warnings


CtrlRule = Literal["unseen", "dev-length", "random"]
"""How the ``ctrl`` split is drawn from the training data (see :func:`select_ctrl`)."""
CTRL_RULES: tuple[str, ...] = get_args(CtrlRule)
"""The :data:`CtrlRule` values, for checks and messages."""


def check_ctrl_rule(rule: str, owner: str = "") -> None:
    """:raises ConfigError: ``rule`` is not one of :data:`CTRL_RULES` (naming them)."""
    if rule not in CTRL_RULES:
        raise ConfigError(f"{owner + '.' if owner else ''}ctrl_rule={rule!r} must be one of {list(CTRL_RULES)}")


CTRL_LENGTH_BINS = 10


def text_lengths(split: TextSplit) -> np.ndarray:
    """Words per instance (whitespace-separated, both texts of a pair summed), shape ``(N,)``."""
    lengths = np.array([len(t.split()) for t in split.text_a], dtype=np.int64)
    if split.text_b is not None:
        lengths += np.array([len(t.split()) for t in split.text_b], dtype=np.int64)
    return lengths


def _words(text: str) -> list[str]:
    return text.lower().split()


def _norm(text: str) -> str:
    return " ".join(_words(text))


def overlaps_ctrl(train: TextSplit, ctrl: TextSplit) -> np.ndarray:
    """Which training rows share their text with a ``ctrl`` row, shape ``(N,)`` bool.

    A single-sentence row overlaps if its words (lower-cased, whitespace-split) are a contiguous
    span of a ctrl row's (a sub-phrase or a copy) or contain a ctrl row's as a span (the sentence it
    was cut from). SST-2's train file holds every phrase of its sentences with a label: without this,
    a student learns a quarter of ctrl's phrases verbatim and ctrl reads ~4 points above dev. A
    sentence pair overlaps only if both texts equal a ctrl pair's.

    :param train: the rows to test.
    :param ctrl: the held-out rows.
    """
    if train.is_pair:
        seen = {(_norm(a), _norm(b)) for a, b in zip(ctrl.text_a, ctrl.text_b)}
        return np.array([(_norm(a), _norm(b)) in seen for a, b in zip(train.text_a, train.text_b)], dtype=bool)
    ctrl_words = [_words(t) for t in ctrl.text_a]
    spans = {" ".join(w[i:j]) for w in ctrl_words for i in range(len(w)) for j in range(i + 1, len(w) + 1)}
    whole = {" ".join(w) for w in ctrl_words}
    lengths = sorted({len(w) for w in ctrl_words if w})
    out = np.zeros(len(train), dtype=bool)
    for k, text in enumerate(train.text_a):
        w = _words(text)
        if " ".join(w) in spans:
            out[k] = True
            continue
        for n in lengths:  # does the row contain a whole ctrl row?
            if n >= len(w):
                break
            if any(" ".join(w[i:i + n]) in whole for i in range(len(w) - n + 1)):
                out[k] = True
                break
    return out


def select_ctrl(train: TextSplit, dev: TextSplit, size: int, rule: CtrlRule, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of the ``size`` training rows that become the ``ctrl`` split.

    ``ctrl`` is what a controller optimises, so it must behave like the evaluation data. ``random``
    draws uniformly; ``dev-length`` and ``unseen`` (the default; :func:`load_task` then also drops
    every training row that :func:`overlaps_ctrl`) draw without replacement with probabilities that
    give ``ctrl`` dev's distribution of lengths (words per instance, in up to
    :data:`CTRL_LENGTH_BINS` quantile bins of dev): each row weighs ``P_dev(bin) / P_train(bin)``.
    Where train and dev come from one distribution (the synthetic task, a dev carved from a file)
    this is a uniform draw; on SST-2, whose train file holds short phrases as well as the whole
    sentences that make up dev (dev averages 19 words, train 9), it keeps ctrl to sentence-like
    lengths. If too few rows have dev-like lengths, all of them are taken and the rest drawn at random.

    :param train: the training rows before the hold-out.
    :param dev: the evaluation rows whose length distribution ``ctrl`` should follow.
    :param size: rows to hold out, ``1 <= size < len(train)``.
    :param rule: one of :data:`CTRL_RULES`.
    :param rng: seeded generator (the selection is deterministic for a seed).
    """
    n = len(train)
    if rule == "random" or len(dev) == 0:
        return np.sort(rng.permutation(n)[:size])
    check_ctrl_rule(rule)
    train_len, dev_len = text_lengths(train), text_lengths(dev)
    edges = np.unique(np.quantile(dev_len, np.linspace(0, 1, CTRL_LENGTH_BINS + 1)[1:-1]))
    train_bin, dev_bin = np.searchsorted(edges, train_len, side="right"), np.searchsorted(edges, dev_len, side="right")
    bins = len(edges) + 1
    p_dev = np.bincount(dev_bin, minlength=bins) / len(dev_len)
    p_train = np.bincount(train_bin, minlength=bins) / n
    weight = np.where(p_train[train_bin] > 0, p_dev[train_bin] / np.maximum(p_train[train_bin], 1e-12), 0.0)
    positive = int(np.count_nonzero(weight))
    if positive <= size:
        chosen = np.flatnonzero(weight)
        others = rng.permutation(np.flatnonzero(weight == 0))[: size - positive]
        return np.sort(np.concatenate([chosen, others]))
    return np.sort(rng.choice(n, size=size, replace=False, p=weight / weight.sum()))


def _check_options(
    ctrl_fraction: float, ctrl_max: int, seed: int, train_limit: int | None, dev_limit: int | None
) -> None:
    if not isinstance(ctrl_fraction, (int, float)) or not 0.0 < ctrl_fraction < 1.0:
        raise ConfigError(f"ctrl_fraction={ctrl_fraction!r} must be in (0, 1)")
    if not isinstance(ctrl_max, int) or ctrl_max < 1:
        raise ConfigError(f"ctrl_max={ctrl_max!r} must be an integer >= 1")
    if not isinstance(seed, int):
        raise ConfigError(f"seed={seed!r} must be an integer")
    for name, limit in (("train_limit", train_limit), ("dev_limit", dev_limit)):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"{name}={limit!r} must be None or an integer >= 1")


def load_task(
    task: str,
    data_dir: str | Path | None = None,
    *,
    ctrl_fraction: float = 0.1,
    ctrl_max: int = 2000,
    seed: int = 0,
    train_limit: int | None = None,
    dev_limit: int | None = None,
    synthetic: SyntheticConfig | None = None,
    train_file: str | Path | None = None,
    dev_file: str | Path | None = None,
    text_columns: tuple[str, ...] | list[str] | None = None,
    label_column: str | None = None,
    ctrl_rule: CtrlRule = "unseen",
    transfer: int = 0,
) -> TaskData:
    """Load a task's train, ctrl and dev splits, deterministically for a seed.

    :param task: a GLUE task (``sst2``, ``glue/sst2``, ``SST-2``, any case), ``synthetic``,
        ``custom`` (with ``train_file``), or the path of a .csv/.tsv/.json/.jsonl file.
    :param data_dir: for GLUE, a folder in GLUE's own TSV layout (``<data_dir>/SST-2/train.tsv``,
        ``dev.tsv``; MNLI's dev is ``dev_matched.tsv``). None loads ``nyu-mll/glue`` from the hub.
        Not used by the synthetic task or custom files.
    :param ctrl_fraction: fraction of the training rows held out as ``ctrl``, in (0, 1).
    :param ctrl_max: cap on the ``ctrl`` size (at least 1 row is always held out).
    :param seed: seeds the ctrl hold-out, the limits, the dev hold-out of a custom file without
        a dev file and, when ``synthetic`` is None, the synthetic generator.
    :param train_limit: keep a seeded subset of this many training rows (after ctrl is carved out).
    :param dev_limit: keep a seeded subset of this many dev rows.
    :param synthetic: generation settings of the synthetic task (default ``SyntheticConfig(seed=seed)``);
        ignored by other tasks, so a pipeline may always pass one.
    :param train_file: custom training file (.csv, .tsv with quoting off, .json, .jsonl).
    :param dev_file: custom dev file; without it a seeded 10% of ``train_file`` becomes dev.
    :param text_columns: custom files' text column(s), one or two; by default the first of
        :data:`TEXT_COLUMN_CANDIDATES` present (``sentence1``+``sentence2``, ..., ``sentence``, ``text``).
    :param label_column: custom files' label column (default ``label``). Integer or string labels
        make classes (sorted; ids follow that order); non-integral numbers make a regression task.
    :param transfer: unlabelled rows appended to train as a *transfer set* (DistilBERT-style): KD
        trains on them with the teachers' targets, CE never sees them. The synthetic task generates
        them (an independent stream); other tasks take a seeded sample of the training rows left
        unused by ``train_limit`` and drop their labels.
    :param ctrl_rule: how ``ctrl`` is drawn from train (see :func:`select_ctrl`): ``unseen``
        (default: the same length distribution as dev, and every training row that shares text with
        a ctrl row dropped, :func:`overlaps_ctrl`), ``dev-length`` (the draw without the drop) or
        ``random``.
    :raises UnknownTaskError: for an unknown task name.
    :raises DataError: for a missing folder, file or column, or a label that cannot be parsed.
    :raises ConfigError: for invalid options or options that do not fit the task.
    """
    _check_options(ctrl_fraction, ctrl_max, seed, train_limit, dev_limit)
    if not isinstance(transfer, int) or transfer < 0:
        raise ConfigError(f"transfer={transfer!r} must be an integer >= 0")
    check_ctrl_rule(ctrl_rule)
    name = str(task).strip()
    key = glue_key(name)
    is_custom = train_file is not None or name.lower() == "custom" or Path(name).suffix.lower() in CUSTOM_SUFFIXES
    if key is None and name.lower() != SYNTHETIC_TASK.name and not is_custom:
        get_task_spec(name)  # raises UnknownTaskError listing the valid names
    custom_options = {"train_file": train_file, "dev_file": dev_file, "text_columns": text_columns, "label_column": label_column}
    if not is_custom:
        given = [k for k, v in custom_options.items() if v is not None]
        if given:
            raise ConfigError(
                f"{given} only apply to custom files; task {name!r} does not use them (pass the file as --task PATH)"
            )

    if key is not None:
        spec = GLUE_TASKS[key]
        train, dev = _load_glue_local(key, Path(data_dir).expanduser()) if data_dir is not None else _load_glue_hub(key)
    elif name.lower() == SYNTHETIC_TASK.name:
        spec, train, dev = make_synthetic_task(synthetic or SyntheticConfig(seed=seed))
    else:
        if train_file is None:
            if name.lower() == "custom":
                raise ConfigError(
                    "task='custom' needs train_file; from the command line pass the file itself as --task PATH "
                    "(a .csv, .tsv, .json or .jsonl file)"
                )
            train_file = name
        elif name.lower() != "custom":
            raise ConfigError(f"task={name!r} and train_file={str(train_file)!r} both name data; pass task='custom' with train_file")
        if text_columns is not None:
            text_columns = tuple(text_columns)
            if len(text_columns) not in (1, 2):
                raise ConfigError(f"text_columns={text_columns!r} must name one or two columns")
        spec, train, dev = _load_custom(train_file, dev_file, text_columns, label_column or "label", seed)

    n = len(train)
    if n < 2:
        raise DataError(f"{spec.name} has {n} training row(s); at least 2 are needed to hold out ctrl")
    n_ctrl = min(max(1, round(ctrl_fraction * n)), ctrl_max, n - 1)
    chosen = select_ctrl(train, dev, n_ctrl, ctrl_rule, np.random.default_rng([seed, 0]))
    rest = np.setdiff1d(np.arange(n), chosen)
    ctrl = train.select(chosen)
    train = train.select(rest)
    if ctrl_rule == "unseen":
        overlap = overlaps_ctrl(train, ctrl)
        if overlap.all():  # degenerate texts (a label column read as text?): the checks below say what is wrong
            logger.warning("every training row of %s shares its text with a ctrl row; none is dropped (are the "
                           "text and label columns swapped?)", spec.name)
        elif overlap.any():
            logger.info("dropped %d training rows that overlap ctrl (ctrl_rule='unseen')", int(overlap.sum()))
            train = train.select(np.flatnonzero(~overlap))
    unused = None
    if train_limit is not None and train_limit < len(train):
        keep = np.sort(np.random.default_rng([seed, 1]).choice(len(train), size=train_limit, replace=False))
        unused = train.select(np.setdiff1d(np.arange(len(train)), keep))
        train = train.select(keep)
    if transfer:
        if key is None and name.lower() == SYNTHETIC_TASK.name:
            pool = make_synthetic_transfer(synthetic or SyntheticConfig(seed=seed), transfer)
        elif unused is not None and len(unused) >= transfer:
            pool = unused.select(np.sort(np.random.default_rng([seed, 2]).choice(len(unused), transfer, replace=False)))
        else:
            have = 0 if unused is None else len(unused)
            raise ConfigError(
                f"transfer={transfer} unlabelled rows were asked for, but {spec.name} has only {have} training rows "
                "left beyond train_limit; lower transfer or train_limit"
            )
        train = train.concat(pool.unlabelled())
    dev = _subset(dev, dev_limit, np.random.default_rng([seed, 3]))
    data = TaskData(spec=spec, train=train, ctrl=ctrl, dev=dev)
    for warning in check_task_data(data, source=str(train_file or name), custom=is_custom):
        logger.warning("%s", warning)
    logger.info("loaded %s: %d train (%d unlabelled), %d ctrl, %d dev", spec.name, len(train),
                int((~train.labelled).sum()), len(ctrl), len(dev))
    return data
