"""The KD run's configs, in one module: :class:`DistillerConfig` (how a run is optimised and
executed) and :class:`BackendConfig` (that plus its data and models: everything that defines a run).
:mod:`kd_backend.distiller` and :mod:`kd_backend.pipeline` build from them (and re-export them)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from kd_backend.data import CtrlRule, check_ctrl_rule
from kd_backend.errors import ConfigError
from kd_backend.models import PRESETS
from kd_backend.pretrained import PRETRAINED
from kd_backend.validation import check_float, check_int


@dataclass(frozen=True)
class DistillerConfig:
    """How a KD run is optimised and executed (what stays fixed across epochs and episodes)."""

    epochs: int = 3
    """Planned epochs of the run: the length of the learning-rate schedule."""
    batch_size: int = 32
    """Training instances per optimizer step."""
    eval_batch_size: int = 256
    """Instances per batch for evaluation, scoring and teacher caching (no gradient)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (1e-3 suits tiny students from scratch; 2e-5 for BERT)."""
    weight_decay: float = 0.01
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    warmup_ratio: float = 0.1
    """Fraction of the run spent warming the learning rate up linearly from 0."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    max_seq_length: int = 128
    """Tokens per instance after truncation."""
    pad_to_max_length: bool = False
    """Pad every batch to ``max_seq_length`` (the paper's static padding) instead of dynamic padding."""
    teacher_source: str = "cache"
    """``cache`` (teacher outputs computed once per dataset) or ``online`` (teacher forward per step)."""
    cache_dir: str = ".cache/dynakd"
    """Folder of the teacher-output cache."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    bf16: bool = True
    """Use bf16 autocast on CUDA (ignored on CPU)."""
    score_bf16: bool = True
    """Run the no-grad uncertainty scoring pass of epoch-scope selection in bf16 autocast (on CUDA,
    and on CPUs with native bf16 instructions): it only ranks instances, and bf16 halves its cost."""
    layer_map: tuple[tuple[int, int], ...] | None = None
    """Explicit (student layer, teacher layer) pairs for hidden alignment; None = PKD default."""
    seed: int = 0
    """Seed of the first episode (``reset(seed)`` overrides it)."""
    progress: bool = False
    """Show tqdm progress bars for caching and epochs."""
    stale_max_age: int = 2
    """``scoring='stale'`` selection reuses an instance's uncertainty from a forward pass at most
    this many epochs old (0 = this epoch only) and rescores the rest (never seen, or older)."""
    finite_check_every: int | None = None
    """Check the loss for NaN/inf every N optimizer steps (each check is a host sync on CUDA);
    None = every step on the CPU, every 50 steps on CUDA (and always at the end of an epoch)."""

    def __post_init__(self) -> None:
        owner = "DistillerConfig"
        for name in ("epochs", "batch_size", "eval_batch_size", "max_seq_length"):
            check_int(owner, name, getattr(self, name), minimum=1)
        check_float(owner, "lr", self.lr, 0.0, low_open=True)
        check_float(owner, "weight_decay", self.weight_decay, 0.0)
        check_float(owner, "warmup_ratio", self.warmup_ratio, 0.0, 1.0, high_open=True)
        # <= 0 would flip (negative) or zero every gradient: the run would silently train up the loss or not at all.
        check_float(owner, "max_grad_norm", self.max_grad_norm, 0.0, low_open=True)
        check_int(owner, "seed", self.seed, minimum=0, maximum=2**32 - 1)
        check_int(owner, "stale_max_age", self.stale_max_age, minimum=0)
        if self.finite_check_every is not None and (
            not isinstance(self.finite_check_every, int) or self.finite_check_every < 1
        ):
            raise ConfigError(
                f"DistillerConfig.finite_check_every={self.finite_check_every!r} must be None or an integer >= 1"
            )
        if self.teacher_source not in ("cache", "online"):
            raise ConfigError(f"DistillerConfig.teacher_source={self.teacher_source!r} must be 'cache' or 'online'")
        if self.layer_map is not None:
            object.__setattr__(self, "layer_map", tuple((int(s), int(t)) for s, t in self.layer_map))
            if not self.layer_map or any(s < 0 or t < 0 for s, t in self.layer_map):
                raise ConfigError(
                    f"DistillerConfig.layer_map={self.layer_map!r} is out of range: must be non-empty (student layer, "
                    "teacher layer) pairs, each >= 0 (0 = embeddings), or None for the PKD default"
                )


def _is_preset(source: str) -> bool:
    return source in PRESETS and not Path(source).is_dir()


_NAMED_LIKE = ("tiny-", "minilm-")  # "bert-..." may be a hub id (bert-base-uncased)


def _check_source(source: str) -> None:
    """Refuse a model name that looks like a preset but is none (before any model is trained)."""
    if not isinstance(source, str) or not source:
        raise ConfigError(f"model source {source!r} must be a non-empty string")
    if source in PRESETS or source in PRETRAINED or Path(source).expanduser().exists() or "/" in source:
        return
    if source.startswith(_NAMED_LIKE):
        raise ConfigError(
            f"unknown model {source!r}: not a folder, and not a preset; presets are {list(PRESETS)} (random "
            f"weights) and {list(PRETRAINED)} (pretrained)"
        )


STUDENT_INITS = ("fresh", "first", "every-other")


@dataclass(frozen=True)
class BackendConfig(DistillerConfig):
    """Everything that defines a KD run: data and models (here) and optimisation (inherited from
    :class:`~kd_backend.distiller.DistillerConfig`, so each knob has one definition and the config
    stays flat: ``--lr``, ``backend.lr`` in YAML)."""

    task: str = "synthetic"
    """``synthetic`` (built in, no files), a GLUE task (``glue/sst2``, ``rte``, …) or a CSV/TSV/JSON file."""
    data_dir: str | None = None
    """GLUE folder in the official TSV layout (e.g. ``../shared/data/glue``); None = the HF hub."""
    text_columns: tuple[str, ...] | None = None
    """Custom file (``--task PATH``): its one or two text columns; None = the first of ``sentence1
    sentence2``, ..., ``sentence``, ``text`` present."""
    label_column: str | None = None
    """Custom file: its label column (None = ``label``). Integers or strings make classes; other numbers regression."""
    dev_file: str | None = None
    """Custom file: a dev file with the same columns; None = a seeded 10% of the rows (``data_seed``) held out as dev."""
    train_limit: int | None = None
    """Use a seeded subset of this many training instances (None = all)."""
    dev_limit: int | None = None
    """Use a seeded subset of this many dev instances (None = all)."""
    ctrl_fraction: float = 0.1
    """Fraction of the training data held out as the ``ctrl`` split that controllers decide on."""
    ctrl_max: int = 2000
    """Cap on the ``ctrl`` split's size."""
    transfer: int = 0
    """Unlabelled sentences added to train as a transfer set (DistilBERT-style): KD learns the
    teachers' targets on them, CE never sees them, and plans without a teacher skip them. The
    synthetic task generates them; other tasks sample them from the training rows left unused by
    ``train_limit`` (their labels dropped)."""
    ctrl_rule: CtrlRule = "unseen"
    """How ``ctrl`` is drawn from train: ``unseen`` (with dev's length distribution, and every
    training row that shares text with a ctrl row dropped from train, so that ctrl scores behave
    like dev: SST-2's train file is mostly short phrases, dev whole sentences, and it labels every
    phrase of its sentences), ``dev-length`` (the same draw, without the drop) or ``random``
    (uniform)."""
    synthetic_train: int = 6000
    """Training instances of the synthetic task (before the ctrl hold-out)."""
    synthetic_dev: int = 1000
    """Dev instances of the synthetic task."""
    data_seed: int = 0
    """Seed of the ctrl hold-out, the subsets and the synthetic task."""
    teachers: tuple[str, ...] = ("tiny-2x128", "tiny-4x256")
    """Teacher sources (preset, pretrained preset, checkpoint dir or hub id); ordered by size automatically."""
    student: str = "tiny-1x64"
    """Student source: a preset (random weights), a pretrained preset (``minilm-lK``: its bottom K
    pretrained layers), a checkpoint dir or hub id. It is also where ``student_init`` copies layers
    from — never from the teachers, so adding a teacher cannot change the student."""
    student_init: str = "fresh"
    """``fresh`` (``student`` as given: all its layers, a new head where it has none), ``first`` (the
    paper's student: the bottom ``student_layers`` layers of ``student``) or ``every-other`` (PKD's
    alternate layers of ``student``). ``first``/``every-other`` need a ``student`` with weights."""
    student_layers: int = 6
    """Layers copied from ``student`` when ``student_init`` is ``first`` or ``every-other``."""
    freeze_embeddings: bool = False
    """Freeze the student's word-embedding matrix (pretrained students: 30,522 x 384 of MiniLM's
    22.7M parameters; skipping its dense gradient and AdamW update speeds up an epoch)."""
    vocab_size: int = 8000
    """WordPiece vocabulary size for models built from presets."""
    teacher_epochs: int | None = None
    """Epochs to fine-tune a preset teacher on first use; None = 3 for presets from scratch, 2 for
    pretrained presets."""
    teacher_lr: float | None = None
    """Learning rate to fine-tune a preset teacher on first use; None = 5e-4 for presets from scratch
    (1e-3 diverges for ``tiny-4x256``), 1e-4 for pretrained presets."""
    progress: bool = True
    """Show progress bars (caching, epochs, teacher fine-tuning)."""
    # Every other field (epochs, batch_size, lr, …, seed) is DistillerConfig's.

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.teachers, str):
            object.__setattr__(self, "teachers", (self.teachers,))
        object.__setattr__(self, "teachers", tuple(self.teachers))
        if self.student_init not in STUDENT_INITS:
            raise ConfigError(f"student_init={self.student_init!r} must be one of {list(STUDENT_INITS)}")
        if self.student_init != "fresh" and _is_preset(self.student):
            raise ConfigError(
                f"student_init={self.student_init!r} copies layers from student={self.student!r}, a preset with "
                "random weights; name a pretrained preset (e.g. minilm-l6), a checkpoint folder or a hub id as "
                "the student, or use student_init='fresh'"
            )
        for source in (*self.teachers, self.student):
            _check_source(source)
        if isinstance(self.text_columns, str):
            object.__setattr__(self, "text_columns", (self.text_columns,))
        if self.text_columns is not None:
            object.__setattr__(self, "text_columns", tuple(self.text_columns))
            if len(self.text_columns) not in (1, 2):
                raise ConfigError(f"BackendConfig.text_columns={self.text_columns!r} must name one or two columns")
        owner = "BackendConfig"
        check_int(owner, "train_limit", self.train_limit, minimum=1, allow_none=True)
        check_int(owner, "dev_limit", self.dev_limit, minimum=1, allow_none=True)
        check_float(owner, "ctrl_fraction", self.ctrl_fraction, 0.0, 1.0, low_open=True, high_open=True)
        check_int(owner, "ctrl_max", self.ctrl_max, minimum=1)
        check_int(owner, "synthetic_train", self.synthetic_train, minimum=2)
        check_int(owner, "synthetic_dev", self.synthetic_dev, minimum=1)
        check_int(owner, "data_seed", self.data_seed, minimum=0, maximum=2**32 - 1)
        check_int(owner, "student_layers", self.student_layers, minimum=1)
        check_int(owner, "vocab_size", self.vocab_size, minimum=100)  # WordPiece needs room for its alphabet
        check_int(owner, "teacher_epochs", self.teacher_epochs, minimum=1, allow_none=True)
        check_float(owner, "teacher_lr", self.teacher_lr, 0.0, low_open=True, allow_none=True)
        check_int(owner, "transfer", self.transfer, minimum=0)
        check_ctrl_rule(self.ctrl_rule, owner)

    def distiller_config(self) -> DistillerConfig:
        """The optimisation part of this config, as a plain :class:`DistillerConfig`."""
        return DistillerConfig(**{f.name: getattr(self, f.name) for f in fields(DistillerConfig)})
