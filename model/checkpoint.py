"""Model checkpoints: a folder with ``config.json`` and orbax-saved float32 ``params/``.

    save_model(model, "checkpoints/maestro-cpu", metadata={...})
    model = load_model()                     # the shipped default checkpoint (package data)
    model = load_model("checkpoints/maestro-cpu")

Loading errors are :class:`CheckpointError` with a one-line message (unknown path, not a
checkpoint, incompatible config); params that do not fit the config are named with what differs
(parameter name, the checkpoint's shape and dtype against the model's, missing or extra ones).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import os
import pathlib
import shutil
import tempfile
import warnings

import jax
import jax.numpy as jnp
from flax import nnx

from perceiver_midi.model.config import Config
from perceiver_midi.model.perceiver_ar import PerceiverAR

# The shipped checkpoints are package data of perceiver_midi.checkpoints: the checkpoints/ folder of
# a clone (and of an editable install), site-packages/perceiver_midi/checkpoints/ in a wheel install
# (which holds the default model alone). Found by import, never by a path relative to a clone.
CHECKPOINTS_DIR = pathlib.Path(str(importlib.resources.files("perceiver_midi.checkpoints")))
# One shipped model continues and infills (round 10, trained to infill: Config.infill); the
# round-4 continuation model (checkpoints/maestro-cpu) stays in a clone for comparison.
DEFAULT_NAME = "maestro-cpu-infill"
INFILL_NAME = DEFAULT_NAME  # the infilling model (its own override: PERCEIVER_MIDI_INFILL_...)


# What a checkpoint folder holds (``save_model`` writes config.json and params/; ``perceiver-midi
# export`` carries MODEL_CARD.md and curve.png over). Export replaces only such a folder.
CHECKPOINT_REQUIRED = ("config.json", "params")
CHECKPOINT_DOCS = ("MODEL_CARD.md", "curve.png")  # documentation that stays with the folder


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    """True if ``path`` is recognisably a checkpoint folder this tool wrote: a real folder (not a
    link) holding config.json (a JSON object with a "config" object) and params/ (a folder),
    and besides them at most MODEL_CARD.md and curve.png (plain files)."""
    path = pathlib.Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    kinds = {"config.json": "file", "params": "dir"} | dict.fromkeys(CHECKPOINT_DOCS, "file")
    with os.scandir(path) as it:
        entries = {e.name: e for e in it}
    if not set(CHECKPOINT_REQUIRED) <= set(entries) <= set(kinds):
        return False
    for name, entry in entries.items():
        is_kind = entry.is_dir if kinds[name] == "dir" else entry.is_file
        if not is_kind(follow_symlinks=False):
            return False
    try:
        info = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and isinstance(info.get("config"), dict)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line."""


def default_checkpoint(task: str = "continue") -> pathlib.Path | None:
    """The shipped checkpoint the CLI and app use when none is given (None if absent): for
    ``task="infill"`` the infilling model (``PERCEIVER_MIDI_INFILL_CHECKPOINT`` overrides it),
    else the default one (``PERCEIVER_MIDI_CHECKPOINT``)."""
    if task not in ("continue", "infill"):
        raise ValueError(f"task must be 'continue' or 'infill', got {task!r}")
    env, name = (
        ("PERCEIVER_MIDI_INFILL_CHECKPOINT", INFILL_NAME)
        if task == "infill"
        else ("PERCEIVER_MIDI_CHECKPOINT", DEFAULT_NAME)
    )
    path = pathlib.Path(os.environ.get(env, CHECKPOINTS_DIR / name))
    return path if (path / "config.json").exists() else None


def _checkpointer():
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_model(model: PerceiverAR, directory: str | os.PathLike, *, metadata: dict | None = None):
    """Write ``config.json`` (config + metadata) and ``params/``; replaces the folder atomically."""
    directory = pathlib.Path(directory).resolve()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        ckpt = _checkpointer()
        ckpt.save(tmp / "params", nnx.state(model, nnx.Param))
        ckpt.wait_until_finished()
        info = {"config": dataclasses.asdict(model.config), "metadata": metadata or {}}
        (tmp / "config.json").write_text(json.dumps(info, indent=1) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_info(directory: str | os.PathLike) -> dict:
    path = pathlib.Path(directory)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint (a file, not a checkpoint folder)")
    try:
        info = json.loads((path / "config.json").read_text())
        Config(**info["config"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not a checkpoint (no config.json)") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable config.json ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read config.json ({exc.strerror})") from None
    return info


def load_model(directory: str | os.PathLike | None = None, **config_overrides) -> PerceiverAR:
    """Load a checkpoint (default: the shipped one). ``config_overrides`` may change settings that
    do not touch parameter shapes (e.g. ``dropout=0.0``, ``max_len`` within the rotary range)."""
    if directory is None:
        directory = default_checkpoint()
        if directory is None:
            raise CheckpointError(
                f"no default checkpoint at {CHECKPOINTS_DIR / DEFAULT_NAME}; pass --checkpoint DIR"
            )
    path = pathlib.Path(directory).resolve()
    return _load_cached(str(path), tuple(sorted(config_overrides.items())))


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, overrides: tuple) -> PerceiverAR:
    info = read_info(path)
    config = Config(**info["config"]).replace(**dict(overrides))
    abstract = nnx.eval_shape(lambda: PerceiverAR(config, rngs=nnx.Rngs(0)))
    target = nnx.state(abstract, nnx.Param)
    params_dir = pathlib.Path(path) / "params"
    if not params_dir.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint (no params/ folder)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:  # compare names, shapes and dtypes first: orbax's errors do not say which differ
            saved = param_specs(_checkpointer().metadata(params_dir).item_metadata.tree)
        except Exception:  # no usable metadata: restoring below reports what goes wrong
            saved = None
        mismatch = saved is not None and params_mismatch(saved, param_specs(target))
        if mismatch:
            what = "config.json" + (f" with {dict(overrides)}" if overrides else "")
            raise CheckpointError(f"{path}: params/ do not fit {what}: {mismatch}")
        try:
            params = _checkpointer().restore(params_dir, target)
        except Exception as exc:  # orbax raises many types; the user needs one line
            raise CheckpointError(f"{path}: cannot restore params ({_reason(exc)})") from None
    model = PerceiverAR(config, rngs=nnx.Rngs(0))
    nnx.update(model, jax.tree.map(lambda x: x, params))
    return model


def _reason(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def param_name(path) -> str:
    """A pytree path of an nnx param state as a dotted name: ``"layers.0.qkv.kernel"``."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    if names and names[-1] == "value":
        names.pop()
    return ".".join(names)


def param_specs(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"layers.0.attn.qkv.kernel": (shape, dtype)}`` for an nnx param state (arrays or
    ShapeDtypeStructs) or an orbax metadata tree of the same params (its ``.value`` levels
    dropped, so both name a parameter alike)."""

    def is_leaf(x):
        return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, dict)

    specs = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]:
        specs[param_name(keys)] = (tuple(leaf.shape), str(leaf.dtype))
    return specs


# Parameters a pretrained checkpoint may lack when it initialises training: zero-initialised
# additions that leave the model's function unchanged (``Config.note_state``).
ADDITIVE_PARAMS = ("note_in.", "cross.k_smear", "cross.q_smear", "match_", "gap_", "layers.")


def is_additive(name: str) -> bool:
    """True for a parameter a pretrained checkpoint may lack (``ADDITIVE_PARAMS``; of the latent
    layers only their smear maps)."""
    if name.startswith("layers."):
        return name.endswith(("k_smear", "q_smear"))
    return name.startswith(ADDITIVE_PARAMS)


# Parameters a pretrained checkpoint may hold with fewer rows: the input embedding gains the
# infilling sentinels' rows (``Config.infill``); the rows it had keep their values.
GROWN_ROWS = ("embed.embedding",)


def grows(name: str, found: tuple, expected: tuple) -> bool:
    """True when parameter ``name`` of shape ``found`` may grow to ``expected`` (GROWN_ROWS)."""
    return (
        name in GROWN_ROWS
        and len(found) == len(expected) == 2
        and found[0] < expected[0]
        and found[1] == expected[1]
    )


def grow_params(pretrained, model) -> None:
    """Gives ``pretrained`` (an nnx param state) the rows of ``model``'s GROWN_ROWS it lacks,
    from ``model``'s own initialisation: the new ids start small and random, the old unchanged."""
    old = pretrained["embed"]["embedding"]
    rows, new = old[...].shape[0], model.embed.embedding[...]
    if rows < new.shape[0]:
        old.set_value(jnp.concatenate([old[...], new[rows:]], axis=0))


def params_mismatch(
    found: dict, expected: dict, *, limit: int = 3, allow_additions: bool = False
) -> str:
    """'' when ``found`` (the checkpoint's param specs) fits ``expected`` (the model's), else the
    first ``limit`` differences in one line: shapes, dtypes, missing and extra parameters.
    ``allow_additions``: the model may have ``ADDITIVE_PARAMS`` the checkpoint lacks, and more
    rows of ``GROWN_ROWS``."""
    problems = []
    for name in sorted(found.keys() | expected.keys()):
        if name not in found and allow_additions and is_additive(name):
            continue
        if name not in found:
            shape, dtype = expected[name]
            problems.append(f"{name} {shape} {dtype} is missing from the checkpoint")
        elif name not in expected:
            shape, dtype = found[name]
            problems.append(f"{name} {shape} {dtype} is in the checkpoint but not in the model")
        elif found[name][0] != expected[name][0] and not (
            allow_additions and grows(name, found[name][0], expected[name][0])
        ):
            problems.append(
                f"{name} has shape {found[name][0]} in the checkpoint, "
                f"the model expects {expected[name][0]}"
            )
        elif found[name][1] != expected[name][1]:
            problems.append(
                f"{name} is {found[name][1]} in the checkpoint, the model expects "
                f"{expected[name][1]}"
            )
    if not problems:
        return ""
    more = len(problems) - limit
    return "; ".join(problems[:limit]) + (f" (and {more} more differences)" if more > 0 else "")
