"""Student and teacher models: presets, loading, layer maps, student initialisation and export.

Every model is a ``BertForSequenceClassification`` (or a checkpoint loadable with
``AutoModelForSequenceClassification``). Presets are built from a ``BertConfig`` with random
weights, so tests and hub-less runs need no download; fine-tuned teachers come from local
checkpoint directories.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import re
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar
from urllib.parse import urlparse

import torch
import transformers
from packaging.version import Version
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from kd_backend.errors import ConfigError, HubOfflineError, ModelError
from kd_backend.pretrained import PRETRAINED, pretrained_path

logger = logging.getLogger(__name__)

STUDENT_INIT_STRATEGIES = ("first", "every-other")
HUB_TIMEOUT_S = 3.0
"""Seconds to wait for the hub's host to answer before a hub id is declared unreachable."""
# transformers renamed ``torch_dtype`` to ``dtype`` in 4.56 (and defaults to "auto" in 5.x).
_DTYPE_KWARG = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_T = TypeVar("_T")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


@dataclass(frozen=True)
class ModelPreset:
    """The shape of a BERT encoder; weights are random (no pre-training)."""

    num_layers: int
    """Number of transformer layers."""
    hidden_size: int
    """Width of the hidden states."""
    num_heads: int
    """Attention heads per layer; must divide ``hidden_size``."""
    intermediate_size: int
    """Width of the feed-forward layer."""

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "intermediate_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"ModelPreset.{name}={value!r} must be an integer >= 1")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"ModelPreset.hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )

    def config(
        self, vocab_size: int, num_labels: int, pad_token_id: int = 0, problem_type: str | None = None
    ) -> BertConfig:
        """A ``BertConfig`` of this shape (SDPA attention, 512 positions)."""
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=512,
            pad_token_id=pad_token_id,
            num_labels=num_labels,
            problem_type=problem_type,
            attn_implementation="sdpa",
        )


PRESETS: Mapping[str, ModelPreset] = MappingProxyType(
    {
        "tiny-1x64": ModelPreset(1, 64, 2, 256),
        "tiny-2x128": ModelPreset(2, 128, 2, 512),
        "tiny-4x256": ModelPreset(4, 256, 4, 1024),
        "tiny-6x384": ModelPreset(6, 384, 6, 1536),
        "bert-6x768": ModelPreset(6, 768, 12, 3072),
        "bert-base": ModelPreset(12, 768, 12, 3072),
        "bert-large": ModelPreset(24, 1024, 16, 4096),
    }
)
"""Named model shapes, smallest first: ``tiny-LxH`` for tests and quick runs, BERT-base/-large
shapes, and ``bert-6x768`` (the paper's 6-layer BERT-base-width student)."""


def _problem_type(num_labels: int, is_regression: bool) -> str:
    if not isinstance(num_labels, int) or isinstance(num_labels, bool) or num_labels < 1:
        raise ConfigError(f"num_labels={num_labels!r} must be an integer >= 1")
    if is_regression and num_labels != 1:
        raise ConfigError(f"a regression task has num_labels=1, got num_labels={num_labels}")
    return "regression" if num_labels == 1 else "single_label_classification"


def _seeded(seed: int | None, build: Callable[[], _T]) -> _T:
    """Call ``build()`` with the torch RNG seeded, leaving the global RNG state untouched."""
    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_model(
    preset: str,
    num_labels: int,
    vocab_size: int,
    pad_token_id: int = 0,
    is_regression: bool = False,
    seed: int | None = None,
) -> BertForSequenceClassification:
    """A randomly initialised model of a named shape.

    :param preset: a key of :data:`PRESETS`.
    :param num_labels: classes of the task; 1 means regression.
    :param vocab_size: size of the tokenizer's vocabulary (``len(tokenizer)``).
    :param pad_token_id: id of the padding token.
    :param is_regression: whether the task is a regression (requires ``num_labels == 1``).
    :param seed: seeds the initialisation (the global RNG is left as it was); None uses it.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown model preset {preset!r}; choose one of {list(PRESETS)}")
    problem_type = _problem_type(num_labels, is_regression)
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size={vocab_size!r} must be an integer >= 1 (use len(tokenizer))")
    if not isinstance(pad_token_id, int) or not 0 <= pad_token_id < vocab_size:
        raise ConfigError(f"pad_token_id={pad_token_id!r} must be an id in [0, {vocab_size})")
    config = PRESETS[preset].config(vocab_size, num_labels, pad_token_id, problem_type)
    return _seeded(seed, lambda: BertForSequenceClassification(config))


def _offline_reason() -> str | None:
    """Why the hub cannot be used now, or None if it seems reachable. Never waits > HUB_TIMEOUT_S."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in _TRUE_VALUES:
            return f"{var}={os.environ[var]} is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # only the proxy knows; let the load itself fail
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    errors: list[OSError] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection((host, port), timeout=HUB_TIMEOUT_S).close()
        except OSError as e:
            errors.append(e)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_TIMEOUT_S)
    if thread.is_alive():
        return f"no answer from {host}:{port} within {HUB_TIMEOUT_S:g} s"
    return f"cannot connect to {host}:{port} ({errors[0]})" if errors else None


def _is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a network failure."""
    seen: BaseException | None = exc
    while seen is not None:
        name = type(seen).__name__
        if isinstance(seen, (ConnectionError, TimeoutError, socket.gaierror)) or any(
            key in name for key in ("Connect", "Timeout", "Offline", "LocalEntryNotFound")
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _load_checkpoint(
    source: str, num_labels: int, problem_type: str, task: str | None, require_head: bool, local_files_only: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    what = f"task {task!r}" if task else "the task"
    config = AutoConfig.from_pretrained(source, local_files_only=local_files_only)
    architectures = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        if config.num_labels != num_labels:
            raise ModelError(
                f"checkpoint {source} was fine-tuned with {config.num_labels} labels but {what} has "
                f"{num_labels}; fine-tune it on this task first with experiments/train_teachers.py"
            )
    elif require_head:
        raise ModelError(
            f"checkpoint {source} (architectures {architectures or 'not recorded'}) has no fine-tuned "
            f"sequence-classification head; fine-tune it on {what} first with experiments/train_teachers.py, "
            "or pass require_head=False to start from a new, untrained head"
        )
    config.num_labels = num_labels
    config.problem_type = problem_type
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    # Without a fine-tuned head the new classifier is expected: hide transformers' "MISSING" load report.
    quiet = contextlib.nullcontext() if require_head else _hf_verbosity_error()
    with _no_hf_progress_bars(), quiet:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, config=config, local_files_only=local_files_only, **{_DTYPE_KWARG: torch.float32}
        )
    logger.info("loaded %s (%s, %d labels)", source, type(model).__name__, num_labels)
    return model, tokenizer


def load_model(
    source: str | Path,
    num_labels: int,
    is_regression: bool,
    *,
    task: str | None = None,
    require_head: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a sequence-classification model and its tokenizer, in float32.

    A ``source`` that is not an existing directory is read as a Hugging Face hub id. When the hub
    cannot be reached (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set, or its host does not answer
    within :data:`HUB_TIMEOUT_S`) only the local hub cache is tried, then :class:`HubOfflineError`.

    :param source: a checkpoint directory (``save_pretrained``/:func:`export_model` output) or a hub id.
    :param num_labels: classes of the task (1 = regression); a fine-tuned head must match it.
    :param is_regression: whether the task is a regression.
    :param task: the task's name, used in error messages.
    :param require_head: demand a fine-tuned classification head (teachers). With False, a
        pre-trained encoder without one gets a new head of ``num_labels`` outputs.
    :raises ModelError: a directory without ``config.json``, a label-count mismatch, a missing head.
    :raises HubOfflineError: a hub id while the hub is unreachable.
    """
    problem_type = _problem_type(num_labels, is_regression)
    source = str(source)
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            found = sorted(p.name for p in path.iterdir())
            raise ModelError(
                f"checkpoint directory {path} has no config.json (it holds {found[:10] or 'nothing'}); "
                "pass a directory written by save_pretrained or kd_backend.models.export_model"
            )
        try:
            return _load_checkpoint(str(path), num_labels, problem_type, task, require_head, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load checkpoint directory {path}: {e}") from e
    if path.exists():
        raise ModelError(f"{source} is a file; pass the checkpoint directory that holds its config.json")
    if source in PRESETS:
        raise ModelError(
            f"{source!r} is a model preset (random weights, no tokenizer), not a checkpoint; build it with "
            "kd_backend.models.build_model, or pass a checkpoint directory"
        )
    if source in PRETRAINED:
        raise ModelError(
            f"{source!r} is a pretrained preset; load it with kd_backend.models.load_pretrained (it has no task head)"
        )
    if not _HUB_ID.fullmatch(source):
        raise ModelError(f"checkpoint directory {path} does not exist (and {source!r} is not a hub id like 'org/name')")
    offline = _offline_reason()
    try:
        return _load_checkpoint(
            source, num_labels, problem_type, task, require_head, local_files_only=offline is not None
        )
    except (OSError, ValueError) as e:
        if offline is not None or _is_connection_error(e):
            raise HubOfflineError(
                f"{source!r} is not an existing directory, so it was read as a Hugging Face hub id, but the "
                f"hub is unreachable ({offline or e}) and the model is not in the local hub cache; pass the "
                "path of a local checkpoint directory instead (e.g. one written by experiments/train_teachers.py)"
            ) from e
        raise ModelError(
            f"cannot load hub id {source!r}: {e}; check the id or pass a local checkpoint directory"
        ) from e


def load_encoder(
    source: str | Path, num_labels: int, is_regression: bool, *, task: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained (or fine-tuned) encoder with a classification head of ``num_labels`` outputs.

    ``source`` is a pretrained preset (:data:`kd_backend.pretrained.PRETRAINED`: its verified folder,
    all of its shipped layers; truncate with :func:`init_student_from_teacher`), a checkpoint
    directory or a hub id. A checkpoint without a task head gets a new, untrained one.
    """
    if str(source) in PRETRAINED:
        return load_model(pretrained_path(str(source)), num_labels, is_regression, task=task, require_head=False)
    return load_model(source, num_labels, is_regression, task=task, require_head=False)


def load_pretrained(
    name: str, num_labels: int, is_regression: bool = False, seed: int | None = None
) -> tuple[BertForSequenceClassification, PreTrainedTokenizerBase]:
    """Pretrained preset ``name`` (e.g. ``minilm-l3``): its bottom layers and a new, seeded head.

    The weights are verified against the preset's sha256 first (:func:`kd_backend.pretrained.pretrained_path`).

    :param name: a key of :data:`kd_backend.pretrained.PRETRAINED`.
    :param num_labels: classes of the task; 1 = regression.
    :param is_regression: whether the task is a regression.
    :param seed: seeds the classification head (the global RNG is left as it was).
    """
    if name not in PRETRAINED:
        raise ModelError(f"unknown pretrained preset {name!r}; choose one of {list(PRETRAINED)}")
    _problem_type(num_labels, is_regression)
    full, tokenizer = load_encoder(name, num_labels, is_regression)
    model = init_student_from_teacher(full, PRETRAINED[name].num_layers, "first", num_labels=num_labels, seed=seed)
    return model, tokenizer


def model_size(model: nn.Module) -> int:
    """Number of non-embedding parameters (every parameter outside ``nn.Embedding`` modules)."""
    embedding = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in embedding)


def _config_int(model: nn.Module, name: str) -> int:
    value = getattr(getattr(model, "config", None), name, None)
    if not isinstance(value, int):
        raise ModelError(f"{type(model).__name__} has no integer config.{name}; pass a transformers BERT-like model")
    return value


def num_layers(model: nn.Module) -> int:
    """Number of transformer layers (``config.num_hidden_layers``)."""
    return _config_int(model, "num_hidden_layers")


def hidden_size(model: nn.Module) -> int:
    """Width of the hidden states (``config.hidden_size``)."""
    return _config_int(model, "hidden_size")


def forward_flops(model: nn.Module, num_tokens: int, num_sequences: int, mean_seq_len: float) -> float:
    """Estimated floating-point operations of one forward pass over a set of sequences.

    ``2 * N * num_tokens + 4 * L * H * num_sequences * mean_seq_len**2``, with N the non-embedding
    parameters (:func:`model_size`; one multiply-add = 2 FLOPs per parameter per token), L layers
    and H the hidden size. The second term is attention's ``Q K^T`` and ``softmax(.) V`` products,
    ``2 * s^2 * H`` FLOPs each per layer for a sequence of length s; ``sum s^2`` is approximated by
    ``num_sequences * mean_seq_len**2`` (exact when the batch is padded to one length).
    """
    if num_tokens < 0 or num_sequences < 0 or mean_seq_len < 0:
        raise ConfigError(
            f"forward_flops needs non-negative counts, got num_tokens={num_tokens}, "
            f"num_sequences={num_sequences}, mean_seq_len={mean_seq_len}"
        )
    attention = 4.0 * num_layers(model) * hidden_size(model) * num_sequences * float(mean_seq_len) ** 2
    return 2.0 * model_size(model) * num_tokens + attention


def resolve_layer_map(
    student_layers: int, teacher_layers: int, layer_map: Sequence[tuple[int, int]] | None = None
) -> tuple[tuple[int, int], ...]:
    """Pairs (student layer, teacher layer) for hidden-state alignment, 1-based (0 = embeddings).

    The default is BERT-PKD's: student layer j <-> teacher layer round(j * Lt / Ls) (halves round
    up) for j = 1..Ls, so a 2-layer student of a 4-layer teacher gets ((1, 2), (2, 4)). Embeddings
    (layer 0) are aligned only when an explicit map names them.
    """
    for name, value in (("student_layers", student_layers), ("teacher_layers", teacher_layers)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelError(f"{name}={value!r} must be an integer >= 1")
    if layer_map is None:
        if student_layers > teacher_layers:
            raise ModelError(
                f"the student has {student_layers} layers but the teacher only {teacher_layers}; the default "
                "layer map needs a student no deeper than its teacher: pass an explicit layer_map"
            )
        # round(j * Lt / Ls) with halves rounded up, in integers
        return tuple(
            (j, (2 * j * teacher_layers + student_layers) // (2 * student_layers)) for j in range(1, student_layers + 1)
        )
    pairs = []
    for pair in layer_map:
        if (
            len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
            or not (0 <= pair[0] <= student_layers and 0 <= pair[1] <= teacher_layers)
        ):
            raise ModelError(
                f"layer_map pair {tuple(pair)!r} is out of range: a pair is (student layer in 0..{student_layers}, "
                f"teacher layer in 0..{teacher_layers}) for a {student_layers}-layer student and a "
                f"{teacher_layers}-layer teacher (0 = embeddings)"
            )
        pairs.append((pair[0], pair[1]))
    if not pairs:
        raise ModelError("layer_map is empty; pass None for the default PKD map, or set hidden_weight=0")
    return tuple(pairs)


def _bert_encoder(model: nn.Module, role: str) -> nn.Module:
    bert = getattr(model, "bert", None)
    if bert is None or not isinstance(getattr(getattr(bert, "encoder", None), "layer", None), nn.ModuleList):
        raise ModelError(
            f"{role} is a {type(model).__name__}; only BERT-like models with their encoder layers at "
            "model.bert.encoder.layer (e.g. BertForSequenceClassification) are supported"
        )
    return bert


def init_student_from_teacher(
    teacher: BertForSequenceClassification,
    num_layers: int,
    strategy: str = "first",
    num_labels: int | None = None,
    seed: int | None = None,
) -> BertForSequenceClassification:
    """A shallower copy of ``teacher``: its config, embeddings, chosen layers and pooler.

    :param teacher: the model to copy from (left unchanged).
    :param num_layers: layers k of the student.
    :param strategy: ``first`` copies teacher layers 1..k (the paper's student: the bottom 6 layers
        of BERT-base); ``every-other`` copies the layers of the default PKD map,
        round(j * Lt / k) for j = 1..k (teacher layers 2, 4, ..., 12 for k = 6 of 12).
    :param num_labels: classes of the new, randomly initialised classifier; None = the teacher's.
    :param seed: seeds the classifier's initialisation (global RNG left untouched).
    :return: a float32 student on the teacher's device, in training mode.
    """
    if strategy not in STUDENT_INIT_STRATEGIES:
        raise ConfigError(f"student init strategy {strategy!r} is not one of {list(STUDENT_INIT_STRATEGIES)}")
    teacher_bert = _bert_encoder(teacher, "the teacher")
    teacher_layers = len(teacher_bert.encoder.layer)
    if not isinstance(num_layers, int) or not 1 <= num_layers <= teacher_layers:
        raise ModelError(
            f"a student initialised from a {teacher_layers}-layer teacher needs 1..{teacher_layers} layers, "
            f"got num_layers={num_layers!r}"
        )
    if strategy == "first":
        copied = tuple(range(1, num_layers + 1))
    else:
        copied = tuple(t for _, t in resolve_layer_map(num_layers, teacher_layers))

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = num_layers
    if num_labels is not None:
        config.num_labels = num_labels
        config.problem_type = _problem_type(num_labels, num_labels == 1)
    student = _seeded(seed, lambda: type(teacher)(config))
    student.to(device=next(teacher.parameters()).device, dtype=torch.float32)
    student_bert = student.bert
    student_bert.embeddings.load_state_dict(teacher_bert.embeddings.state_dict())
    for i, t in enumerate(copied):
        student_bert.encoder.layer[i].load_state_dict(teacher_bert.encoder.layer[t - 1].state_dict())
    if student_bert.pooler is not None and teacher_bert.pooler is not None:
        student_bert.pooler.load_state_dict(teacher_bert.pooler.state_dict())
    logger.info("student of %d layers initialised from teacher layers %s (%s)", num_layers, copied, strategy)
    return student


@contextlib.contextmanager
def _no_hf_progress_bars() -> Iterator[None]:
    """Silence transformers' per-call weight loading/saving bars (noise for small models), then restore."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _hf_verbosity_error() -> Iterator[None]:
    """Show only transformers' errors (not its load-report warnings) inside the block."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def export_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path,
    label_names: Sequence[str] | None = None, card: str | None = None,
) -> Path:
    """Save ``model`` (safetensors) and ``tokenizer`` so that ``from_pretrained(out_dir)`` reloads them.

    Both are written to a temporary sibling directory that is then renamed into place, so
    ``out_dir`` never holds a half-written export; an existing export is replaced.

    :param label_names: class names in id order, saved as the config's ``id2label``/``label2id`` (so
        ``pipeline("text-classification")`` answers ``positive``, not ``LABEL_1``); None = leave them.
    :param card: a model card (Markdown), saved as ``README.md``.
    :return: the export directory.
    """
    if label_names is not None:
        names = [str(n) for n in label_names]
        if len(names) != model.config.num_labels:
            raise ModelError(f"{len(names)} label names {names} for a model with {model.config.num_labels} labels")
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {n: i for i, n in enumerate(names)}
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ModelError(f"export target {out} exists and is not a directory; choose another out_dir")
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.with_name(f".{out.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        with _no_hf_progress_bars():
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if card is not None:
            (tmp / "README.md").write_text(card)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tag}")
            os.replace(out, old)
            try:
                os.replace(tmp, out)
            except OSError:
                os.replace(old, out)  # put the previous export back
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s to %s", type(model).__name__, out)
    return out


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the state dict: every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
