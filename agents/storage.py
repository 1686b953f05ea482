"""Reading and writing learners without running code from a file.

SB3's own ``load`` (``save_util.load_from_zip_file``) cloudpickle-decodes the ``data`` entry of a
policy ``.zip``, so opening a crafted file runs its code. DynaKD never calls it. A DynaKD policy
is rebuilt instead from what is safe to read:

* the zip's ``data`` entry is parsed as plain JSON, and only plain values are read from it (the
  ``dynakd`` record that :func:`agents.make_agent` puts on every learner: algorithm, constructor
  hyper-parameters, seed, and the spaces described as JSON; and the learner's counters). Entries
  SB3 stored as pickles (``":serialized:"``) are never decoded;
* the ``*.pth`` entries (state dicts of the policy and its optimizers, SAC's entropy coefficient)
  are read with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
  containers;
* off-policy replay buffers are saved as ``.npz`` (``numpy.load(allow_pickle=False)``) instead of
  SB3's pickle;
* the learner's random-number states (torch, numpy, Python, the action space) are saved as JSON
  with each checkpoint, so a resumed run samples the same actions as an uninterrupted one.

A ``.zip`` without the ``dynakd`` record (written by SB3 directly, or by a DynaKD older than this
module) is refused: it could only be opened by unpickling.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import random
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces

from kd_backend.errors import ConfigError
from kd_backend.io import atomic_write_bytes, atomic_write_json

META_KEY = "dynakd"
"""Attribute of a learner (and so plain-JSON key of its saved ``data``) holding what rebuilds it."""
COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_current_progress_remaining", "_n_calls",
            "exploration_rate")
"""Plain learner attributes restored from ``data`` (the training progress); everything else is rebuilt."""
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


# ---------------------------------------------------------------------------------------------- spaces
def describe_space(space: spaces.Space) -> dict[str, Any]:
    """A JSON description of a Discrete, MultiDiscrete or Box space (what :func:`space_from_description` reads)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist()}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": space.low.tolist(), "high": space.high.tolist()}
    raise ConfigError(f"cannot describe a {type(space).__name__} space; DynaKD envs use Discrete, MultiDiscrete or Box")


def space_from_description(desc: Any, where: str) -> spaces.Space:
    """The space :func:`describe_space` described.

    :raises ConfigError: a malformed description (``where`` names the file).
    """
    try:
        kind = desc["type"]
        if kind == "Discrete":
            return spaces.Discrete(int(desc["n"]), start=int(desc.get("start", 0)))
        if kind == "MultiDiscrete":
            return spaces.MultiDiscrete(np.asarray(desc["nvec"], dtype=np.int64))
        if kind == "Box":
            dtype = np.dtype(desc["dtype"])
            return spaces.Box(np.asarray(desc["low"], dtype=dtype), np.asarray(desc["high"], dtype=dtype),
                              shape=tuple(desc["shape"]), dtype=dtype)
    except (KeyError, TypeError, ValueError) as err:
        raise ConfigError(f"{where}: malformed space description {desc!r} ({err})") from err
    raise ConfigError(f"{where}: unknown space type {desc.get('type')!r}")


def spaces_equal(a: spaces.Space, b: spaces.Space) -> bool:
    """Equal spaces, comparing descriptions (Box bounds exactly)."""
    try:
        return describe_space(a) == describe_space(b)
    except ConfigError:
        return False


# ---------------------------------------------------------------------------------------------- policy zip
def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def dynakd_record(algo: str, hyperparameters: dict[str, Any], seed: int, observation_space: spaces.Space,
                  action_space: spaces.Space, meaning: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The plain-JSON record saved with a learner: everything :func:`agents.load_agent` needs to rebuild it.

    Hyper-parameters that are not plain JSON (a callable schedule, ...) could only be saved as
    pickles: they are listed under ``unsaved`` and loading such a learner is refused by name.
    ``meaning`` says what the spaces stand for (see :func:`meaning_mismatch`).
    """
    plain = {k: json.loads(json.dumps(v)) for k, v in hyperparameters.items() if _jsonable(v)}
    record = {"format": 1, "algo": algo, "hyperparameters": plain, "seed": int(seed),
              "unsaved": sorted(set(hyperparameters) - set(plain)),
              "observation_space": describe_space(observation_space), "action_space": describe_space(action_space)}
    if meaning is not None:
        record["meaning"] = json.loads(json.dumps(meaning))
    return record


def meaning_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str | None:
    """How what a policy's actions and observations stand for differs from the env's, or None.

    Both are mappings like ``{"actions": [label per action or component], "observations": [name per
    feature], ...}`` (``agents.spaces.Spaces.meaning``): two envs whose spaces have the same shape can
    still mean different things (a reordered menu, other bins), and a policy acting on the wrong
    meaning runs without error and gives wrong results. Keys only one side has are not compared.
    """
    for key in sorted(set(saved) & set(current)):
        a, b = saved[key], current[key]
        if a == b:
            continue
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            i = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
            return f"{key} {i} means {a[i]!r} for the policy but {b[i]!r} here (the policy's {key}: {a})"
        return f"{key} is {a!r} for the policy but {b!r} here"
    return None


def read_policy(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Read a policy ``.zip`` without unpickling anything.

    :return: ``(data, params, variables)``: the plain-JSON entries of ``data`` (pickled ones are
        dropped undecoded), the state dicts of the ``*.pth`` entries, and ``pytorch_variables``.
    :raises ConfigError: not a zip, no ``data``, no DynaKD record, or a ``.pth`` entry holding
        more than tensors (a crafted file).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(f"policy file {path} is not a readable .zip ({err}); pass a policy.zip written by DynaKD") from err
    with archive:
        names = archive.namelist()
        if "data" not in names:
            raise ConfigError(f"policy file {path} has no 'data' entry; it is not a stable-baselines3 policy")
        try:
            raw = json.loads(archive.read("data").decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(f"policy file {path}: its 'data' entry is not JSON ({err})") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"policy file {path}: its 'data' entry is not a JSON object")
        data = {k: v for k, v in raw.items() if not (isinstance(v, dict) and ":serialized:" in v)}
        if not isinstance(data.get(META_KEY), dict):
            raise ConfigError(
                f"policy file {path} has no DynaKD record ('{META_KEY}' in its data): it was written by "
                "stable-baselines3 directly or by an older DynaKD. DynaKD does not open such files, because "
                "reading them means unpickling code from the file; relearn the policy with learn_policy.py"
            )
        params: dict[str, Any] = {}
        variables: dict[str, Any] = {}
        for name in names:
            if not name.endswith(".pth"):
                continue
            try:
                obj = torch.load(io.BytesIO(archive.read(name)), map_location=device, weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
                raise ConfigError(
                    f"policy file {path}: entry {name} is not a plain tensor file and was refused "
                    f"(it may be crafted to run code; only open policies you or DynaKD wrote): {str(err)[:300]}"
                ) from err
            if name in ("pytorch_variables.pth", "tensors.pth"):
                variables = obj
            else:
                params[name[: -len(".pth")]] = obj
    return data, params, variables


def restore_counters(agent: Any, data: dict[str, Any]) -> None:
    """Put the training progress (:data:`COUNTERS`) saved in ``data`` back on a rebuilt learner."""
    for name in COUNTERS:
        if name in data and hasattr(agent, name) and isinstance(data[name], (int, float)):
            setattr(agent, name, data[name])


def restore_variables(agent: Any, variables: dict[str, Any]) -> None:
    """Copy saved torch variables (SAC's ``log_ent_coef``) into the rebuilt learner's tensors in place."""
    for name, value in variables.items():
        target = getattr(agent, name, None)
        if isinstance(target, torch.Tensor) and isinstance(value, torch.Tensor):
            with torch.no_grad():
                target.copy_(value)


# ---------------------------------------------------------------------------------------------- replay buffer
def save_replay_buffer(buffer: Any, path: Path) -> Path:
    """An SB3 ``ReplayBuffer`` as ``.npz`` (arrays, position, fullness), written atomically."""
    arrays = {name: getattr(buffer, name) for name in BUFFER_ARRAYS if getattr(buffer, name, None) is not None}
    out = io.BytesIO()
    np.savez(out, pos=np.asarray(buffer.pos), full=np.asarray(buffer.full), **arrays)
    return atomic_write_bytes(path, out.getvalue())


def load_replay_buffer(buffer: Any, path: Path) -> None:
    """Fill ``buffer`` (the rebuilt learner's) from :func:`save_replay_buffer`'s file, checking shapes.

    :raises ConfigError: a pickled (``.pkl``) buffer, an unreadable file or arrays of other shapes.
    """
    if path.suffix != ".npz":
        raise ConfigError(
            f"replay buffer {path} is not a DynaKD .npz buffer (an older run's pickle?); DynaKD does not unpickle "
            "files. Start the run again with --overwrite"
        )
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"replay buffer {path} is unreadable ({err}); start the run again with --overwrite") from err
    for name in BUFFER_ARRAYS:
        current = getattr(buffer, name, None)
        if current is None:
            continue
        if name not in stored or stored[name].shape != current.shape:
            got = stored[name].shape if name in stored else "missing"
            raise ConfigError(f"replay buffer {path}: {name} is {got}, the learner needs {current.shape}")
        current[...] = stored[name]
    buffer.pos, buffer.full = int(stored["pos"]), bool(stored["full"])


# ---------------------------------------------------------------------------------------------- RNG states
def rng_state(agent: Any) -> dict[str, Any]:
    """The random-number states a learner's actions and updates draw from, as plain JSON."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    space = getattr(agent, "action_space", None)
    if space is not None and getattr(space, "_np_random", None) is not None:
        state["action_space"] = space.np_random.bit_generator.state
    return state


def set_rng_state(agent: Any, state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s states."""
    torch.set_rng_state(torch.from_numpy(np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "action_space" in state and getattr(agent, "action_space", None) is not None:
        agent.action_space.np_random.bit_generator.state = state["action_space"]


def save_rng_state(agent: Any, path: Path) -> Path:
    """Write :func:`rng_state` to ``path`` (JSON, atomically)."""
    return atomic_write_json(path, rng_state(agent))


def load_rng_state(path: Path) -> dict[str, Any]:
    """Read a file of :func:`save_rng_state`.

    :raises ConfigError: unreadable or malformed.
    """
    try:
        state = json.loads(Path(path).read_text())
        if not isinstance(state, dict) or not {"torch", "numpy", "python"} <= set(state):
            raise ValueError("missing torch/numpy/python states")
    except (OSError, ValueError) as err:
        raise ConfigError(f"RNG state {path} is unreadable ({err}); start the run again with --overwrite") from err
    return state
