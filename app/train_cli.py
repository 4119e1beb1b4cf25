"""``perceiver-midi train``, ``eval`` and ``export``: the ML engineer's commands."""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import sys

from perceiver_midi.app.core.errors import (
    UserError,
    nonnegative_int,
    one_line_errors,
    positive_float,
    positive_int,
)
from perceiver_midi.app.core.pipeline import ensure_out_dir
from perceiver_midi.model.checkpoint import (
    CHECKPOINT_DOCS,
    CheckpointError,
    is_checkpoint_dir,
    load_model,
    param_specs,
    params_mismatch,
)
from perceiver_midi.model.config import PRESETS, Config
from perceiver_midi.model.evaluate import evaluate
from perceiver_midi.model.perceiver_ar import PerceiverAR
from perceiver_midi.model.train import (
    TrainConfig,
    branch,
    has_state,
    init_distributed,
    is_lead,
    load_params,
    read_train_config,
    sync,
    train,
)
from perceiver_midi.tokenizer import dataset
from perceiver_midi.tokenizer.dataset import load_split

# Relative to the folder the command runs in (a clone's root in the README), never to where the
# package is installed: a pip-installed perceiver-midi must not write into site-packages.
DEFAULT_MAESTRO = pathlib.Path(
    os.environ.get("PERCEIVER_MIDI_MAESTRO", "../shared/data/maestro-v3.0.0")
)
DEFAULT_DATA = pathlib.Path("work/data")


def _parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--set {pair}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            out[key] = value
    return out


# TrainConfig fields that have their own option, not --set.
_NOT_SETTABLE = {
    "preset": "use --preset",
    "model_overrides": "give model settings one by one (--set d_model=128)",
    "init_from": "use --init-from",
}
# Numeric settings that count something (at least 1); the other numbers must be at least 0,
# except the seed.
_AT_LEAST_ONE = {
    "vocab_size", "max_len", "num_latents", "d_model", "num_heads", "mlp_ratio", "input_dim",
    "cross_heads", "batch_size", "total_steps", "log_every", "eval_every", "eval_pieces",
    "eval_tokens_per_piece",
}  # fmt: skip
_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "None": (None,)}


def _is_kind(value, kind) -> bool:
    if kind is None:
        return value is None
    if isinstance(value, bool):  # True is an int to Python, not to a setting
        return kind is bool
    return isinstance(value, kind)


def _check_setting(field, value) -> None:
    """UserError (one line) unless ``value`` has the type of dataclass ``field`` (by its
    annotation, e.g. ``int | None``) and a sensible sign."""
    kinds = [_TYPES.get(t.strip()) for t in str(field.type).split("|")]
    if all(kinds):  # an annotation we know how to read
        if not any(_is_kind(value, k) for group in kinds for k in group):
            raise UserError(
                f"--set {field.name}={value!r}: expected {field.type.replace(' | None', '')}"
            )
    if isinstance(value, int | float) and not isinstance(value, bool) and field.name != "seed":
        low = 1 if field.name in _AT_LEAST_ONE else 0
        if not low <= value < float("inf"):
            raise UserError(f"--set {field.name}={value!r}: must be at least {low}")
    if field.name == "dtype":
        import jax.numpy as jnp

        try:
            floating = jnp.issubdtype(jnp.dtype(value), jnp.floating)
        except TypeError:
            floating = False
        if not floating:
            raise UserError(f"--set dtype={value!r}: expected a float dtype such as float32")


def _check_overrides(overrides: dict, model_fields: dict, train_fields: dict) -> None:
    for key, value in overrides.items():
        if key in _NOT_SETTABLE:
            raise UserError(f"--set {key}: not a --set setting; {_NOT_SETTABLE[key]}")
        field = model_fields.get(key) or train_fields.get(key)
        if field is None:
            continue  # reported with all unknown keys at once
        _check_setting(field, value)


def _check_params_fit(checkpoint: str, config, what: str) -> None:
    """UserError naming the first differing parameters unless ``checkpoint``'s params fit a
    model of ``config`` (settings that shape no parameter, like latents, may differ)."""
    from flax import nnx

    try:
        loaded = load_params(checkpoint)  # (load_model's params; any number of processes)
    except CheckpointError as exc:
        raise UserError(f"{what.split()[0]}: {exc}") from None
    abstract = nnx.eval_shape(lambda: PerceiverAR(config, rngs=nnx.Rngs(0)))
    found = param_specs(loaded)
    expected = param_specs(nnx.state(abstract, nnx.Param))
    mismatch = params_mismatch(found, expected, allow_additions=True)
    if mismatch:
        raise UserError(f"{what}: its params do not fit the training config: {mismatch}")


def _check_resume(workdir: pathlib.Path, tc) -> None:
    """A work dir with training state resumes only with a model of the same parameter shapes."""
    from flax import nnx

    if not (workdir / "train_config.json").is_file() or not has_state(workdir):
        return
    try:
        before = read_train_config(workdir).model_config()
    except (OSError, ValueError, TypeError, KeyError):
        return  # unreadable record: restoring the state decides
    now = tc.model_config()

    def specs(config):
        abstract = nnx.eval_shape(lambda: PerceiverAR(config, rngs=nnx.Rngs(0)))
        return param_specs(nnx.state(abstract, nnx.Param))

    mismatch = params_mismatch(specs(before), specs(now))
    if mismatch:
        raise UserError(
            f"{workdir}: holds training state of another model shape ({mismatch}); resume it "
            "with the --preset and --set it was started with, or choose a new --workdir"
        )


def _ensure_data(data: pathlib.Path, maestro: pathlib.Path, splits: list[str]) -> None:
    """Prepare MAESTRO token arrays into ``data`` if they are not there yet (takes seconds)."""
    missing = [s for s in splits if not (data / s / "DONE.json").exists()]
    if not missing:
        return
    if not (maestro / "maestro-v3.0.0.csv").exists():
        raise UserError(f"{data}: no prepared data, and no MAESTRO at {maestro} (pass --maestro)")
    try:
        dataset.prepare(dataset.maestro_sources(maestro), data, missing, progress=False)
    except dataset.ForeignFolderError as exc:
        raise UserError(str(exc)) from None


def _join_processes(args: argparse.Namespace) -> None:
    """``jax.distributed.initialize`` for a multi-process run (before any other use of JAX)."""
    given = [args.coordinator, args.num_processes, args.process_id]
    if not args.distributed and given == [None] * 3:
        return  # one process, as always
    if not args.distributed and None in given:
        raise UserError(
            "several processes need --coordinator HOST:PORT, --num-processes N and --process-id I "
            "(or --distributed, to detect them on a TPU pod or a SLURM cluster)"
        )
    if args.coordinator is not None and ":" not in args.coordinator:
        raise UserError(f"--coordinator {args.coordinator}: expected HOST:PORT")
    if None not in given[1:] and args.process_id >= args.num_processes:
        raise UserError(
            f"--process-id {args.process_id}: must be below --num-processes {args.num_processes}"
        )
    try:
        init_distributed(args.coordinator, args.num_processes, args.process_id)
    except (RuntimeError, ValueError, TypeError) as exc:
        reason = " ".join(str(exc).split())
        raise UserError(f"cannot join the other training processes: {reason}") from None


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose from {sorted(PRESETS)}")
    model_fields = {f.name: f for f in dataclasses.fields(Config)}
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    model_keys, train_keys = set(model_fields), set(train_fields)
    overrides = _parse_overrides(args.set)
    _check_overrides(overrides, model_fields, train_fields)
    unknown = set(overrides) - model_keys - train_keys
    if unknown:
        raise UserError(f"unknown setting(s) {sorted(unknown)} for --set")
    workdir = pathlib.Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise UserError(f"{workdir}: exists and is not a folder (--workdir)")
    model_over = dict(sorted((k, v) for k, v in overrides.items() if k in model_keys))
    train_over = {k: v for k, v in overrides.items() if k in train_keys and k not in model_keys}
    if args.branch_from and args.init_from:
        raise UserError("--branch-from and --init-from exclude each other")
    if args.branch_from and not (args.cooldown_steps and args.cooldown_steps > 0):
        raise UserError("--branch-from needs --cooldown-steps N (N >= 1)")
    _join_processes(args)  # (before anything below uses JAX)
    try:
        if args.branch_from and has_state(args.workdir):
            tc = read_train_config(args.workdir)  # resume an interrupted cooldown branch
        elif args.branch_from:
            main = pathlib.Path(args.branch_from)
            if not (main / "train_config.json").exists():
                raise UserError(f"{main}: not a training work dir (no train_config.json)")
            base = read_train_config(main)
            model_over = dict(base.model_overrides) | model_over
            tc = dataclasses.replace(
                base,
                model_overrides=tuple(sorted(model_over.items())),
                schedule="wsd",
                decay_steps=args.cooldown_steps,
                **train_over,
            )
            tc.model_config()
            step = branch(main, args.workdir)
            tc = dataclasses.replace(tc, decay_start=step)
            if is_lead():
                print(f"cooldown branch of {main} at step {step}: {args.cooldown_steps} steps to 0")
        else:
            tc = TrainConfig(
                preset=args.preset,
                model_overrides=tuple(sorted(model_over.items())),
                init_from=args.init_from,
                **train_over,
            )
            tc.model_config()
    except (ValueError, TypeError) as exc:
        raise UserError(str(exc)) from None
    if not args.branch_from:
        _check_resume(workdir, tc)
        if tc.init_from and tc.init_from.lower() != "none" and not has_state(workdir):
            _check_params_fit(tc.init_from, tc.model_config(), f"--init-from {tc.init_from}")
    data = pathlib.Path(args.data)
    # Process 0 prepares missing data first (on a shared filesystem the others then find it).
    if is_lead():
        _ensure_data(data, pathlib.Path(args.maestro), ["train", "validation"])
    sync("data")
    if not is_lead():
        _ensure_data(data, pathlib.Path(args.maestro), ["train", "validation"])
    ensure_out_dir(workdir)
    try:
        result = train(tc, data, workdir, max_steps=args.steps, max_hours=args.hours)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    print(json.dumps(result))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.checkpoint)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    data = pathlib.Path(args.data)
    _ensure_data(data, pathlib.Path(args.maestro), [args.split])
    try:
        split = load_split(data, args.split)
    except (OSError, ValueError) as exc:
        raise UserError(f"{data / args.split}: cannot read the prepared split ({exc})") from None
    if len(split) == 0:
        raise UserError(f"{data / args.split}: the split has no pieces to evaluate")
    results = []
    contexts = [args.context] if args.context else [model.config.max_len]
    if not args.context and args.compare_context and model.config.max_len > args.compare_context:
        contexts.append(args.compare_context)
    for ctx in contexts:
        r = evaluate(
            model,
            split,
            context=ctx,
            num_latents=args.latents,
            batch_size=args.batch_size,
            max_pieces=args.max_pieces,
            progress=not args.json,
            note_off_rule=True,
        )
        r["split"] = args.split
        r["checkpoint"] = str(args.checkpoint or "default")
        results.append(r)
        print(
            f"{args.split}: NLL {r['nll']:.4f} nats/token over {r['tokens']:,} tokens in "
            f"{r['pieces']} pieces at context {r['context']} ({r['seconds']:.0f} s); "
            f"{r['nll_note_off_rule']:.4f} as sampled (NOTE_OFF only for sounding pitches)",
            file=sys.stderr if args.json else sys.stdout,
        )
    if args.json:
        main, *others = results
        if others:
            main["at_context"] = {str(o["context"]): o["nll"] for o in others}
            main["note_off_rule_at_context"] = {
                str(o["context"]): o["nll_note_off_rule"] for o in others
            }
        print(json.dumps(main))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import shutil
    import tempfile

    workdir = pathlib.Path(args.workdir)
    if not workdir.is_dir():
        raise UserError(f"{workdir}: no such training work dir (--workdir)")
    src = workdir / "best"
    if not (src / "config.json").exists():
        raise UserError(f"{src}: no best checkpoint yet (training saves one at each validation)")
    out = pathlib.Path(os.path.abspath(args.out))  # normalised, links not followed
    if out.exists() or out.is_symlink():
        empty = out.is_dir() and not out.is_symlink() and not any(out.iterdir())
        if not empty and not is_checkpoint_dir(out):
            raise UserError(
                f"{out}: exists and is not a checkpoint folder (config.json, params/); "
                "left untouched: remove it yourself or choose another --out"
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot create the folder ({exc.strerror})") from None
    # Everything goes through a fresh folder of our own next to OUT; nothing else is deleted.
    work = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        new = work / "new"
        shutil.copytree(src, new)
        if out.exists():
            for keep in CHECKPOINT_DOCS:
                if (out / keep).exists():
                    shutil.copy2(out / keep, new / keep)
            os.replace(out, work / "old")  # the old checkpoint (or empty folder) is deleted below
        os.replace(new, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"exported {src} -> {out}")
    return 0


def add_commands(sub) -> None:
    p = sub.add_parser("train", help="train (or resume training) on prepared MAESTRO tokens")
    one_line_errors(p)
    p.add_argument("--workdir", required=True, help="checkpoints, logs and curve go here")
    p.add_argument("--preset", default="cpu", help="model preset: tiny, cpu, paper")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model/training setting")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="prepare-data output folder")
    p.add_argument("--maestro", default=str(DEFAULT_MAESTRO), help="MAESTRO, if --data is empty")
    p.add_argument("--steps", type=nonnegative_int, help="stop at this (absolute) step")
    p.add_argument("--hours", type=positive_float, help="stop after this many hours")
    p.add_argument(
        "--init-from",
        help="params for a new work dir: a checkpoint folder, or 'none' for random weights "
        "(default: the shipped checkpoint when its shape matches)",
    )
    p.add_argument(
        "--branch-from",
        metavar="MAIN",
        help="cooldown branch: start WORKDIR from MAIN's latest state and decay the rate to 0",
    )
    p.add_argument(
        "--cooldown-steps", type=positive_int, help="length of the --branch-from cooldown"
    )
    multi = p.add_argument_group(
        "several processes (hosts); the work dir must be on a filesystem they all share"
    )
    multi.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    multi.add_argument("--num-processes", type=positive_int, metavar="N")
    multi.add_argument("--process-id", type=nonnegative_int, metavar="I", help="0 .. N - 1")
    multi.add_argument(
        "--distributed",
        action="store_true",
        help="join with the settings detected from the cluster (TPU pod, SLURM, Open MPI)",
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="NLL (nats/token) over a MAESTRO split, every token once")
    one_line_errors(p)
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped one)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="prepare-data output folder")
    p.add_argument("--maestro", default=str(DEFAULT_MAESTRO), help="MAESTRO, if --data is empty")
    p.add_argument("--context", type=positive_int, help="input context (default: the model's N)")
    p.add_argument(
        "--compare-context", type=positive_int, default=1024, help="also score at this context"
    )
    p.add_argument("--latents", type=positive_int, help="latents per window (default: model's M)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--max-pieces", type=positive_int, help="only the first pieces (quick checks)")
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="copy a work dir's best params to a checkpoint folder")
    one_line_errors(p)
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="e.g. checkpoints/maestro-cpu")
    p.set_defaults(func=_cmd_export)
