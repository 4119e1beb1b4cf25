"""``perceiver-midi train``, ``eval`` and ``export``: the ML engineer's commands."""

from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import sys

from app.errors import UserError

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_MAESTRO = REPO_ROOT.parent / "shared/data/maestro-v3.0.0"
DEFAULT_DATA = REPO_ROOT / "work/data"


def _parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--set {pair}: expected KEY=VALUE")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _ensure_data(data: pathlib.Path, maestro: pathlib.Path, splits: list[str]) -> None:
    """Prepare MAESTRO token arrays into ``data`` if they are not there yet (takes seconds)."""
    from tokenizer import dataset

    missing = [s for s in splits if not (data / s / "DONE.json").exists()]
    if not missing:
        return
    if not (maestro / "maestro-v3.0.0.csv").exists():
        raise UserError(f"{data}: no prepared data, and no MAESTRO at {maestro} (pass --maestro)")
    try:
        dataset.prepare(dataset.maestro_sources(maestro), data, missing, progress=False)
    except dataset.ForeignFolderError as exc:
        raise UserError(str(exc)) from None


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from model.config import PRESETS, Config
    from model.train import TrainConfig, branch, has_state, read_train_config, train

    if args.preset not in PRESETS:
        raise UserError(f"unknown preset {args.preset!r}; choose from {sorted(PRESETS)}")
    model_keys = {f.name for f in dataclasses.fields(Config)}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = _parse_overrides(args.set)
    unknown = set(overrides) - model_keys - train_keys
    if unknown:
        raise UserError(f"unknown setting(s) {sorted(unknown)} for --set")
    model_over = dict(sorted((k, v) for k, v in overrides.items() if k in model_keys))
    train_over = {k: v for k, v in overrides.items() if k in train_keys and k not in model_keys}
    if args.branch_from and args.init_from:
        raise UserError("--branch-from and --init-from exclude each other")
    if args.branch_from and not (args.cooldown_steps and args.cooldown_steps > 0):
        raise UserError("--branch-from needs --cooldown-steps N (N >= 1)")
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
    data = pathlib.Path(args.data)
    _ensure_data(data, pathlib.Path(args.maestro), ["train", "validation"])
    result = train(tc, data, args.workdir, max_steps=args.steps, max_hours=args.hours)
    print(json.dumps(result))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError, load_model
    from model.evaluate import evaluate
    from tokenizer.dataset import load_split

    try:
        model = load_model(args.checkpoint)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    data = pathlib.Path(args.data)
    _ensure_data(data, pathlib.Path(args.maestro), [args.split])
    split = load_split(data, args.split)
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

    from model.checkpoint import CHECKPOINT_DOCS, is_checkpoint_dir

    src = pathlib.Path(args.workdir) / "best"
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
    out.parent.mkdir(parents=True, exist_ok=True)
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
    p.add_argument("--workdir", required=True, help="checkpoints, logs and curve go here")
    p.add_argument("--preset", default="cpu", help="model preset: tiny, cpu, paper")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="model/training setting")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="prepare-data output folder")
    p.add_argument("--maestro", default=str(DEFAULT_MAESTRO), help="MAESTRO, if --data is empty")
    p.add_argument("--steps", type=int, help="stop at this (absolute) step")
    p.add_argument("--hours", type=float, help="stop after this many hours")
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
    p.add_argument("--cooldown-steps", type=int, help="length of the --branch-from cooldown")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="NLL (nats/token) over a MAESTRO split, every token once")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--checkpoint", help="checkpoint folder (default: the shipped one)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="prepare-data output folder")
    p.add_argument("--maestro", default=str(DEFAULT_MAESTRO), help="MAESTRO, if --data is empty")
    p.add_argument("--context", type=int, help="input context (default: the model's N)")
    p.add_argument("--compare-context", type=int, default=1024, help="also score at this context")
    p.add_argument("--latents", type=int, help="latents per window (default: the model's M)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-pieces", type=int, help="only the first pieces (quick checks)")
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="copy a work dir's best params to a checkpoint folder")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True, help="e.g. checkpoints/maestro-cpu")
    p.set_defaults(func=_cmd_export)
