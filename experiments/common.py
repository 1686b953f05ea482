"""Command-line plumbing shared by the scripts: YAML config file + flags → a frozen config dataclass.

Every field of the script's config dataclass is a flag (its docstring is the help text); a
``--config FILE.yaml`` supplies new defaults, and any flag overrides the file.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import sys
import typing
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from kd_backend.errors import ConfigError, DynaKDError  # noqa: E402
from kd_backend.io import atomic_write_text  # noqa: E402

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


def hide_fields(cls: type[T], names: typing.Iterable[str]) -> type[T]:
    """A subclass of config dataclass ``cls`` whose fields ``names`` keep their defaults but are no flags.

    A script that uses only part of a shared config shows only the flags it reads (``--help`` must
    not list a flag that does nothing).
    """
    import tyro

    names = set(names)
    hints = typing.get_type_hints(cls)
    unknown = names - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"hide_fields: {cls.__name__} has no field(s) {sorted(unknown)}")
    hidden = [
        (f.name, typing.Annotated[hints[f.name], tyro.conf.Suppress], dataclasses.field(default=f.default))
        for f in dataclasses.fields(cls) if f.name in names
    ]
    return dataclasses.make_dataclass(
        cls.__name__, hidden, bases=(cls,), frozen=True, namespace={"__doc__": cls.__doc__, "__module__": cls.__module__}
    )


def load_config(cls: type[T], path: str | Path, required: tuple[str, ...] = ()) -> T:
    """Read a YAML file into ``cls``.

    :param required: top-level keys the file must contain (a missing one is an error naming it).
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist; see experiments/configs/ for examples")
    data = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"config file {path} is missing required key(s) {missing}")
    return overlay_config(cls, data, str(path))


def parse_args(cls: type[T], description: str, argv: list[str] | None = None, required: tuple[str, ...] = ()) -> T:
    """Parse ``--config FILE`` (optional) and every other flag into ``cls``."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    default = cls()
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        default = load_config(cls, argv[i + 1], required)
        del argv[i : i + 2]
    return tyro.cli(cls, args=argv, default=default, description=description)


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


def cli(main: Callable[[T], Any], cls: type[T], description: str | None, required: tuple[str, ...] = ()) -> None:
    """Entry point of a script: parse the config, run ``main`` (see :func:`run_main`)."""
    setup_logging()
    run_main(main, lambda: parse_args(cls, description or "", required=required))
