"""The one command-line stack of every script and benchmark: a frozen config dataclass whose fields
are the flags (docstrings the help text), an optional ``--config FILE.yaml`` whose keys become the
defaults (flags override it), one error and exit rule (:func:`run_main`).

A learn config (a shipped one, or a run's ``config.yaml``) also configures replay, compare and
search: keys only learning uses are ignored there, so one file describes a setting for all scripts.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import tyro
import yaml

from agents.configs import CONFIG_FILE, LearnConfig, hide_fields  # noqa: F401 (hide_fields: re-exported for scripts)
from kd_backend.errors import ConfigError, DynaKDError
from kd_backend.io import atomic_write_text
from kd_backend.pipeline import config_dict

T = TypeVar("T")


def overlay_config(cls: type[T], data: dict[str, Any], where: str, base: Any = None) -> T:
    """Overlay a dict on a config dataclass's defaults (nested dataclasses too), naming unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    base = cls() if base is None else base
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(names)}")
    changes: dict[str, Any] = {}
    for name, value in data.items():
        current = getattr(base, name)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            changes[name] = overlay_config(type(current), value, f"{where}.{name}", current)
        elif isinstance(value, list):
            changes[name] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        else:
            changes[name] = value
    return dataclasses.replace(base, **changes)


def save_yaml(path: str | Path, data: Any) -> None:
    """Write YAML atomically."""
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "huggingface_hub", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


EXIT_RUN_ERROR = 1
"""Exit status of a script whose job failed with a DynaKD error or an OS error (bad data, a model that
does not fit, an unwritable folder): the message names the cause and the fix. A bad flag or config
value is refused while parsing, with status 2, before anything runs; Ctrl-C exits 130."""


def os_error_message(err: OSError) -> str:
    """An OS error as a message naming the file and what to do about it."""
    where = f" ({err.filename})" if err.filename else ""
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "the folder is not writable (or the file not readable); fix its permissions or choose another --out / --runs-dir / --cache-dir"
    elif err.errno == errno.ENOSPC:
        fix = "the disk is full; free space or choose a folder on another disk"
    elif err.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        fix = "a file stands where a folder is expected (or the reverse); choose another path"
    else:
        fix = f"set {TRACEBACK_ENV}=1 for the traceback"
    return f"{err.strerror or err}{where}: {fix}"


EXIT_USAGE = 2
"""Exit status of a bad flag or config value, refused while parsing (as argparse and tyro do)."""

TRACEBACK_ENV = "DYNAKD_TRACEBACK"
"""Set to 1 to get the traceback of an OS error instead of its one-line message."""


def run_main(main: Callable[[T], Any], parse: Callable[[], T], interrupted: str = "") -> None:
    """Every script's entry point: ``main(parse())``, with DynaKD's exit statuses (:data:`EXIT_RUN_ERROR`)."""
    try:
        config = parse()
    except DynaKDError as err:  # a bad flag or config value: refused before anything runs
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    try:
        main(config)
    except DynaKDError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_RUN_ERROR)
    except OSError as err:
        if os.environ.get(TRACEBACK_ENV):
            raise
        print(f"error: {os_error_message(err)}", file=sys.stderr)
        sys.exit(EXIT_RUN_ERROR)
    except KeyboardInterrupt:
        print(f"\ninterrupted (Ctrl-C){interrupted}", file=sys.stderr)
        sys.exit(130)


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def load_config_file(cls: type[T], path: str | Path) -> T:
    """Read a YAML config file into ``cls``, checking required and unknown keys.

    ``cls.REQUIRED_KEYS`` (a class variable, default none) are the top-level keys the file must
    hold. A config with ``READS_LEARN_CONFIG = True`` (replay, compare, search, PBT) also reads a
    learn config (a shipped one, or a run's ``config.yaml``): the keys only learning uses
    (``algo``, ``total_episodes``, ...) are ignored there, so one file describes a setting for all scripts.

    :raises ConfigError: a missing file, invalid YAML, a missing required key or an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; see experiments/configs/ for examples")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config keys, not {type(data).__name__}")
    required = tuple(getattr(cls, "REQUIRED_KEYS", ()))
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(
            f"config file {path} is missing required key(s) {missing} (required: {list(required)}); "
            "see experiments/configs/default.yaml"
        )
    if getattr(cls, "READS_LEARN_CONFIG", False):
        learn_only = (_field_names(LearnConfig) - _field_names(cls)) & set(data)
        data = {k: v for k, v in data.items() if k not in learn_only}
    return overlay_config(cls, data, str(path))


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The value of ``--flag VALUE`` / ``--flag=VALUE`` in ``argv`` (tyro accepts - or _), or None."""
    names = {flag, flag.replace("-", "_")}
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key in names:
            if eq:
                return value
            if i + 1 < len(argv):
                return argv[i + 1]
            raise ConfigError(f"{flag} needs a value")
    return None


def parse_config(cls: type[T], description: str | None, argv: Sequence[str] | None = None) -> T:
    """Flags (and an optional ``--config FILE.yaml``, read by :func:`load_config_file`) → a ``cls``
    config; flags override the file. Booleans are switches (``--overwrite``, ``--no-progress``).

    For :class:`LearnConfig`, ``--resume RUN_DIR`` makes ``RUN_DIR/config.yaml`` the base config.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    path = _flag_value(argv, "--config")
    if path is not None:
        i = next(i for i, a in enumerate(argv) if a.partition("=")[0] == "--config")
        del argv[i : i + (1 if "=" in argv[i] else 2)]
    if cls is LearnConfig:
        resume = _flag_value(argv, "--resume")
        if resume is not None:
            if path is not None:
                raise ConfigError("--resume RUN_DIR reads RUN_DIR/config.yaml; do not pass --config with it")
            if not (Path(resume) / CONFIG_FILE).is_file():
                raise ConfigError(f"--resume {resume}: no {CONFIG_FILE} there; is it a run folder of learn_policy.py?")
            path = str(Path(resume) / CONFIG_FILE)
    default = load_config_file(cls, path) if path is not None else cls()
    return tyro.cli(cls, args=argv, default=default, description=description)


def cli(main: Callable[[T], Any], cls: type[T], description: str | None) -> None:
    """Every script's entry point: logging, flags → config (:func:`parse_config`), ``main(config)``,
    with the exit statuses of :func:`run_main` (2 for a bad flag or config value, 1 and a message for
    a DynaKD or OS error, 130 for Ctrl-C)."""
    setup_logging()
    quiet_libraries()
    run_main(main, lambda: parse_config(cls, description), interrupted="; nothing after this point was written")


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"a.b.c": value}`` (to compare two configs key by key)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: data}


def save_config(path: str | Path, config: Any) -> None:
    """Write the resolved config (``--config`` of any script reads it back)."""
    save_yaml(path, config_dict(config))


def quiet_libraries() -> None:
    """Hide the per-file progress bars of transformers (model loading and saving) in script output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
