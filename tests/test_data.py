"""Task specs and data loading: GLUE TSVs from ../shared/data, the hub path, custom files, errors."""

from __future__ import annotations

import csv
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from kd_backend.data import TaskData, TextSplit, load_task
from kd_backend.errors import ConfigError, DataError, UnknownTaskError
from kd_backend.tasks import GLUE_TASKS, get_task_spec, task_names

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GLUE_DIR = SHARED_DATA / "glue"

needs_glue = pytest.mark.skipif(not GLUE_DIR.is_dir(), reason=f"GLUE data folder {GLUE_DIR} not found")

# task -> (train rows, dev rows, number of text columns, label dtype, metrics), from the data README
GLUE_EXPECTED = {
    "sst2": (67_349, 872, 1, np.int64, ("accuracy",)),
    "rte": (2_490, 277, 2, np.int64, ("accuracy",)),
    "mrpc": (3_668, 408, 2, np.int64, ("f1", "accuracy")),
    "cola": (8_551, 1_043, 1, np.int64, ("matthews",)),
    "stsb": (5_749, 1_500, 2, np.float32, ("pearson", "spearman")),
}


@lru_cache(maxsize=None)
def _glue(task: str) -> TaskData:
    """The task with every file row kept (``ctrl_rule='unseen'`` would drop those sharing text with
    ctrl), so the splits can be checked against the files."""
    return load_task(task, GLUE_DIR, ctrl_rule="dev-length")


def _raw_rows(path: Path, text_cols: tuple, label_col) -> list[tuple]:
    """An independent reading of a GLUE TSV: (texts..., raw label) per row."""
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if isinstance(label_col, str):
        header, rows = rows[0], rows[1:]
        text_cols, label_col = [header.index(c) for c in text_cols], header.index(label_col)
    return [(*(r[c] for c in text_cols), r[label_col]) for r in rows]


# ------------------------------------------------------------------------------------ specs


@pytest.mark.parametrize("name", ["sst2", "glue/sst2", "SST-2", "Glue/SST2", " sst-2 "])
def test_task_name_spellings(name: str) -> None:
    assert get_task_spec(name) is GLUE_TASKS["sst2"]
    assert get_task_spec("STS-B").name == "glue/stsb"


def test_unknown_task_lists_valid_names() -> None:
    with pytest.raises(UnknownTaskError, match="glue/sst2") as info:
        get_task_spec("sst3")
    assert "synthetic" in str(info.value) and "'sst3'" in str(info.value)
    with pytest.raises(UnknownTaskError, match="glue/rte"):
        load_task("imdb", GLUE_DIR)
    assert set(task_names()) == {f"glue/{k}" for k in GLUE_TASKS} | {"synthetic"}


def test_label_encoding_matches_the_hub() -> None:
    assert GLUE_TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert GLUE_TASKS["qnli"].label_names == ("entailment", "not_entailment")
    assert GLUE_TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert GLUE_TASKS["mrpc"].label_names[1] == "equivalent"
    assert GLUE_TASKS["qqp"].label_names[1] == "duplicate"
    assert GLUE_TASKS["wnli"].label_names == ("not_entailment", "entailment")
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].num_labels == 1


# ------------------------------------------------------------------------------ local GLUE


@needs_glue
@pytest.mark.parametrize("task", list(GLUE_EXPECTED))
def test_glue_tsv_row_counts_types_and_metrics(task: str) -> None:
    n_train, n_dev, n_text, dtype, metrics = GLUE_EXPECTED[task]
    data = _glue(task)
    assert len(data.train) + len(data.ctrl) == n_train
    assert len(data.ctrl) == min(round(0.1 * n_train), 2000)
    assert len(data.dev) == n_dev
    assert data.spec.metrics == metrics
    for split in (data.train, data.ctrl, data.dev):
        assert split.labels.dtype == dtype
        assert (split.text_b is not None) == (n_text == 2)
    if dtype == np.int64:
        assert set(np.unique(data.train.labels)) == set(range(data.spec.num_labels))
    else:
        assert 0.0 <= data.train.labels.min() and data.train.labels.max() <= 5.0


@needs_glue
def test_glue_rows_match_an_independent_reading() -> None:
    """train + ctrl is the whole file (as a multiset), with the hub's label ids."""
    rte = _glue("rte")
    raw = _raw_rows(GLUE_DIR / "RTE" / "train.tsv", ("sentence1", "sentence2"), "label")
    ids = {"entailment": 0, "not_entailment": 1}
    expected = Counter((a, b, ids[y]) for a, b, y in raw)
    got = Counter()
    for split in (rte.train, rte.ctrl):
        got.update(zip(split.text_a, split.text_b, split.labels.tolist()))
    assert got == expected

    cola = _glue("cola")  # no header: label in column 1, sentence in column 3
    raw = _raw_rows(GLUE_DIR / "CoLA" / "dev.tsv", (3,), 1)
    assert list(zip(cola.dev.text_a, cola.dev.labels.tolist())) == [(s, int(y)) for s, y in raw]


@needs_glue
def test_glue_known_rows() -> None:
    sst2, mrpc, stsb = _glue("sst2"), _glue("mrpc"), _glue("stsb")
    assert sst2.dev.text_a[0] == "it 's a charming and often affecting journey . " and sst2.dev.labels[0] == 1
    assert mrpc.dev.text_a[0].startswith("He said the foodservice pie business")
    assert mrpc.dev.text_b[0].startswith('"The foodservice pie business')  # unbalanced quote kept
    assert mrpc.dev.labels[0] == 1
    assert stsb.dev.labels[:2].tolist() == [5.0, 4.75]
    assert _glue("rte").dev.labels[:2].tolist() == [1, 0]  # not_entailment, entailment


@needs_glue
def test_glue_limits_and_determinism() -> None:
    full = _glue("sst2")
    small = load_task("glue/SST-2", GLUE_DIR, train_limit=200, dev_limit=50, ctrl_max=100)
    again = load_task("sst2", str(GLUE_DIR), train_limit=200, dev_limit=50, ctrl_max=100)
    other = load_task("sst2", GLUE_DIR, train_limit=200, dev_limit=50, ctrl_max=100, seed=1)
    assert (len(small.train), len(small.ctrl), len(small.dev)) == (200, 100, 50)
    assert small.fingerprint == again.fingerprint and small.train == again.train
    assert other.train != small.train and other.ctrl != small.ctrl
    assert set(small.dev.text_a) <= set(full.dev.text_a)
    with pytest.raises(ConfigError, match="split"):
        small.split("test")
    assert small.split("ctrl") is small.ctrl


@needs_glue
def test_qnli_without_train_file_is_a_clear_error() -> None:
    with pytest.raises(DataError, match=r"QNLI/train\.tsv"):
        load_task("qnli", GLUE_DIR)


def test_missing_data_dir_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_task("sst2", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"SST-2/train\.tsv"):
        load_task("sst2", tmp_path)


def test_unparseable_glue_label_names_the_line(tmp_path: Path) -> None:
    folder = tmp_path / "RTE"
    folder.mkdir()
    rows = "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n"
    (folder / "train.tsv").write_text(rows)
    (folder / "dev.tsv").write_text(rows.replace("maybe", "not_entailment"))
    with pytest.raises(DataError, match=r"line 3: label 'maybe'"):
        load_task("rte", tmp_path)


# ------------------------------------------------------------------------------------ hub


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_hub_offline_points_to_data_dir(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    import datasets

    def fail(*args, **kwargs):
        raise AssertionError("the hub must not be contacted in offline mode")

    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match="--data-dir"):
        load_task("sst2")


def test_hub_unreachable_points_to_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match="unreachable.*--data-dir"):
        load_task("rte")


@needs_glue
def test_hub_and_local_tsv_give_identical_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in for nyu-mll/glue (same columns, ClassLabel order and extra idx column)."""
    import datasets

    def fake_hub(path: str, name: str):
        assert (path, name) == ("nyu-mll/glue", "rte")
        names = ["entailment", "not_entailment"]
        features = datasets.Features(
            {
                "sentence1": datasets.Value("string"),
                "sentence2": datasets.Value("string"),
                "label": datasets.ClassLabel(names=names),
                "idx": datasets.Value("int32"),
            }
        )
        splits = {}
        for split, file in (("train", "train.tsv"), ("validation", "dev.tsv")):
            rows = _raw_rows(GLUE_DIR / "RTE" / file, ("sentence1", "sentence2"), "label")
            columns = {
                "sentence1": [r[0] for r in rows],
                "sentence2": [r[1] for r in rows],
                "label": [names.index(r[2]) for r in rows],
                "idx": list(range(len(rows))),
            }
            splits[split] = datasets.Dataset.from_dict(columns, features=features)
        return datasets.DatasetDict(splits)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_hub)
    assert load_task("rte").fingerprint == _glue("rte").fingerprint


# ---------------------------------------------------------------------------- custom files


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _write_tsv(path: Path, header: list[str], rows: list[list]) -> Path:
    """TSV as GLUE writes it: tab-separated, no quoting."""
    path.write_text("\n".join("\t".join(map(str, r)) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


def _reviews(n: int = 40) -> list[tuple[str, str]]:
    return [(f'review {i} , a "quoted" word', "pos" if i % 3 else "neg") for i in range(n)]


def test_custom_csv_string_labels_single_text(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "reviews.csv", ["text", "label"], [list(r) for r in _reviews()])
    data = load_task(str(path), seed=1)
    assert data.spec.name == "custom" and data.spec.text_columns == ("text",)
    assert data.spec.label_names == ("neg", "pos")  # sorted: neg=0, pos=1
    assert data.spec.metrics == ("accuracy", "f1")
    assert (len(data.train), len(data.ctrl), len(data.dev)) == (32, 4, 4)  # 10% dev, then 10% ctrl
    every = data.train.text_a + data.ctrl.text_a + data.dev.text_a
    assert sorted(every) == sorted(t for t, _ in _reviews())
    truth = dict(_reviews())
    assert all(data.spec.label_names[y] == truth[t] for t, y in zip(data.train.text_a, data.train.labels))
    assert load_task(str(path), seed=1).fingerprint == data.fingerprint


def test_ctrl_is_disjoint_from_train(tmp_path: Path) -> None:
    # GLUE files hold duplicate rows (RTE 2 pairs, SST-2 371 sentences), so use unique texts here
    path = _write_tsv(tmp_path / "unique.tsv", ["sentence", "label"], [[f"s{i}", i % 2] for i in range(300)])
    data = load_task(str(path), ctrl_fraction=0.2, seed=4)
    assert (len(data.train), len(data.ctrl), len(data.dev)) == (216, 54, 30)
    assert not set(data.train.text_a) & set(data.ctrl.text_a)
    assert not set(data.dev.text_a) & (set(data.train.text_a) | set(data.ctrl.text_a))


def test_custom_tsv_int_labels_sentence_pair_with_dev_file(tmp_path: Path) -> None:
    rows = [[f"first {i}", f'second "{i}', i % 3] for i in range(30)]
    train = _write_tsv(tmp_path / "train.tsv", ["sentence1", "sentence2", "label"], rows)
    dev = _write_tsv(tmp_path / "dev.tsv", ["sentence1", "sentence2", "label"], rows[:9])
    data = load_task("custom", train_file=train, dev_file=dev)
    assert data.spec.is_pair and data.spec.num_labels == 3 and data.spec.label_names == ("0", "1", "2")
    assert data.spec.metrics == ("accuracy",)
    assert len(data.dev) == 9 and data.dev.text_b[0] == 'second "0'
    assert data.dev.labels.tolist() == [i % 3 for i in range(9)]


def test_custom_json_and_jsonl_with_named_columns(tmp_path: Path) -> None:
    records = [{"question": f"q{i}?", "answer": f"a{i}", "gold": [1, 5][i % 2]} for i in range(20)]
    json_path = tmp_path / "qa.json"
    json_path.write_text(json.dumps(records))
    jsonl_path = tmp_path / "qa.jsonl"
    jsonl_path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    a = load_task(str(json_path), text_columns=["question", "answer"], label_column="gold")
    b = load_task(str(jsonl_path), text_columns=("question", "answer"), label_column="gold")
    assert a.fingerprint == b.fingerprint
    assert a.spec.label_names == ("1", "5") and set(a.train.labels.tolist()) == {0, 1}


def test_custom_float_labels_make_a_regression_task(tmp_path: Path) -> None:
    rows = [[f"s{i}", f"t{i}", f"{i * 0.37:.2f}"] for i in range(20)]
    path = _write_csv(tmp_path / "sts.csv", ["sentence1", "sentence2", "score"], rows)
    data = load_task(str(path), label_column="score")
    assert data.spec.is_regression and data.spec.metrics == ("pearson", "spearman")
    assert data.train.labels.dtype == np.float32


def test_custom_file_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.csv not found"):
        load_task(str(tmp_path / "missing.csv"))
    path = _write_csv(tmp_path / "x.csv", ["text", "y"], [["a", "1"], ["b", "0"], ["c", "1"]])
    with pytest.raises(DataError, match=r"no column 'label'; its columns are \['text', 'y'\]"):
        load_task(str(path))
    nocol = _write_csv(tmp_path / "n.csv", ["body", "label"], [["a", "1"], ["b", "0"], ["c", "1"]])
    with pytest.raises(DataError, match=r"no text column found among \['body', 'label'\]"):
        load_task(str(nocol))
    bad = _write_csv(tmp_path / "bad.csv", ["text", "label"], [["a", "0.5"], ["b", "oops"], ["c", "1.5"]])
    with pytest.raises(DataError, match=r"bad\.csv, line 3: label 'oops'"):
        load_task(str(bad))
    empty = _write_csv(tmp_path / "empty.csv", ["text", "label"], [["a", "pos"], ["b", ""], ["c", "neg"]])
    with pytest.raises(DataError, match=r"line 3: the label is empty"):
        load_task(str(empty))
    one = _write_csv(tmp_path / "one.csv", ["text", "label"], [["a", "pos"], ["b", "pos"], ["c", "pos"]])
    with pytest.raises(DataError, match="two or more classes"):
        load_task(str(one))


needs_text = pytest.mark.skipif(not (SHARED_DATA / "text").is_dir(), reason=f"{SHARED_DATA / 'text'} not found")


@needs_text
def test_shared_text_sets_load_as_custom_files() -> None:
    # unbalanced quotes: read with quoting off; every row kept (the default rule drops MR's 3 that share text with ctrl)
    mr = load_task(str(SHARED_DATA / "text" / "MR" / "all.tsv"), ctrl_rule="dev-length")
    assert len(mr.train) + len(mr.ctrl) + len(mr.dev) == 10_662
    assert mr.spec.label_names == ("0", "1") and mr.spec.text_columns == ("text",)
    trec = SHARED_DATA / "text" / "TREC"
    data = load_task("custom", train_file=trec / "train.tsv", dev_file=trec / "test.tsv", label_column="coarse",
                     ctrl_rule="dev-length")
    assert data.spec.label_names == ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
    assert (len(data.train) + len(data.ctrl), len(data.dev)) == (5_452, 500)


# ------------------------------------------------------------------------- options, values


def test_option_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ctrl_fraction"):
        load_task("synthetic", ctrl_fraction=0.0)
    with pytest.raises(ConfigError, match="train_limit"):
        load_task("synthetic", train_limit=0)
    with pytest.raises(ConfigError, match="only apply to custom files"):
        load_task("sst2", GLUE_DIR, text_columns=("sentence",))
    with pytest.raises(ConfigError, match="needs train_file"):
        load_task("custom")


def test_text_split_validation_and_immutability() -> None:
    split = TextSplit(text_a=["a", "b"], text_b=None, labels=[0, 1])
    assert isinstance(split.text_a, tuple) and split.labels.dtype == np.int64
    with pytest.raises(ValueError):
        split.labels[0] = 1  # read-only
    assert split == TextSplit(("a", "b"), None, np.array([0, 1], dtype=np.int32))
    assert split != TextSplit(("a", "b"), None, np.array([1, 1]))
    assert split.select([1]).text_a == ("b",)
    with pytest.raises(DataError, match="one label per instance"):
        TextSplit(("a", "b"), None, np.array([0]))
    with pytest.raises(DataError, match="pair up"):
        TextSplit(("a", "b"), ("c",), np.array([0, 1]))
    with pytest.raises(DataError, match="class id"):
        TaskData(GLUE_TASKS["sst2"], split, split, TextSplit(("a",), None, np.array([2])))


@needs_glue
def test_ctrl_follows_dev_lengths_on_sst2_and_random_restores_the_uniform_hold_out():
    from kd_backend.data import select_ctrl, text_lengths

    glue = str(GLUE_DIR)  # not relative to the working directory: pytest may run from anywhere
    matched = load_task("glue/sst2", glue, ctrl_max=1000, train_limit=2000)
    uniform = load_task("glue/sst2", glue, ctrl_max=1000, train_limit=2000, ctrl_rule="random")
    dev_mean = text_lengths(matched.dev).mean()  # whole sentences: ~19.5 words
    assert abs(text_lengths(matched.ctrl).mean() - dev_mean) < 1.5
    assert text_lengths(uniform.ctrl).mean() < dev_mean - 7  # phrases: ~9 words
    assert not set(matched.ctrl.text_a) & set(matched.train.text_a)  # held out
    # deterministic for a seed, and a uniform draw when train and dev share a distribution
    again = load_task("glue/sst2", glue, ctrl_max=1000, train_limit=2000)
    assert again.ctrl == matched.ctrl
    split = matched.train
    rng = np.random.default_rng(0)
    chosen = select_ctrl(split, split, 500, "dev-length", rng)
    assert len(np.unique(chosen)) == 500 and (np.diff(chosen) > 0).all()
    with pytest.raises(ConfigError, match="ctrl_rule"):
        load_task("synthetic", ctrl_rule="longest")


def test_overlaps_ctrl_flags_sub_phrases_copies_and_containing_rows():
    """Hand-built rows: a sub-phrase of a ctrl sentence, a copy (case and spacing differ), the
    longer sentence a ctrl row was cut from, and rows that only share words or a non-contiguous run."""
    from kd_backend.data import overlaps_ctrl

    ctrl = TextSplit(("a gripping , funny film", "dull"), None, np.array([1, 0]))
    train = TextSplit((
        "gripping , funny",            # a span of ctrl row 0
        "A  Gripping , funny film",    # the same text
        "it is a gripping , funny film indeed",  # contains ctrl row 0
        "so dull",                     # contains ctrl row 1 (a one-word ctrl row)
        "a funny film",                # the words, but not contiguous in ctrl
        "gripping tale",               # shares one word
        "dullness",                    # a word that merely starts with a ctrl row
    ), None, np.array([1, 1, 1, 0, 1, 1, 0]))
    assert overlaps_ctrl(train, ctrl).tolist() == [True, True, True, True, False, False, False]
    pairs_ctrl = TextSplit(("a b",), ("c d",), np.array([1]))
    pairs = TextSplit(("A b", "a b", "a"), ("c  d", "c", "c d"), np.array([1, 1, 0]))
    assert overlaps_ctrl(pairs, pairs_ctrl).tolist() == [True, False, False]  # pairs: whole copies only


@needs_glue
def test_unseen_ctrl_shares_no_text_with_sst2_train():
    """SST-2's train file labels every phrase of its sentences: the default rule drops from train
    whatever shares text with ctrl, which the plain dev-length draw leaves in (a fifth of train)."""
    from kd_backend.data import overlaps_ctrl

    glue = str(GLUE_DIR)
    leaky = load_task("glue/sst2", glue, ctrl_max=300, train_limit=3000, ctrl_rule="dev-length")
    unseen = load_task("glue/sst2", glue, ctrl_max=300, train_limit=3000)  # the default rule
    assert unseen.ctrl == leaky.ctrl  # the same draw
    assert len(unseen.train) == len(leaky.train) == 3000
    assert overlaps_ctrl(leaky.train, leaky.ctrl).mean() > 0.02
    assert not overlaps_ctrl(unseen.train, unseen.ctrl).any()
