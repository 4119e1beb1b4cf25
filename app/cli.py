"""The ``perceiver-midi`` command line.

Every user mistake (a missing or non-MIDI file, bad options, a checkpoint that does not fit)
ends with one line on stderr and exit status 2, never a traceback; anything else (a bug) is one
line with exit status 1. Set PERCEIVER_MIDI_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

from perceiver_midi.app import generate_cli, train_cli
from perceiver_midi.app.batch import cli as batch_cli
from perceiver_midi.app.core.errors import (
    USER_ERROR_EXIT,
    UserError,
    nonnegative_int,
    one_line,
    one_line_errors,
)
from perceiver_midi.app.core.pipeline import ensure_out_dir
from perceiver_midi.app.train_cli import DEFAULT_MAESTRO
from perceiver_midi.app.web import page as web
from perceiver_midi.tokenizer import MidiError, dataset, encode, write_midi


def _cmd_tokenize(args: argparse.Namespace) -> int:
    """One JSON line per file; a file the tokenizer refuses is one error line (the others are
    still tokenized) and the exit status is then 2, as for every refused input."""
    status = 0
    for path in args.files:
        try:
            ids = encode(path, add_sos=args.sos, add_eos=args.eos)
        except MidiError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            status = USER_ERROR_EXIT
            continue
        print(json.dumps({"file": path, "ids": ids.tolist()}, separators=(",", ":")))
    return status


def _read_ids_json(path: str) -> list[int]:
    try:
        text = pathlib.Path(path).read_text() if path != "-" else sys.stdin.read()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    text = text.strip()
    try:
        obj = json.loads(text.splitlines()[0] if text.startswith("{") else text)
    except (json.JSONDecodeError, IndexError):
        raise UserError(f"{path}: not JSON (expected a list of ids or a tokenize line)") from None
    ids = obj.get("ids") if isinstance(obj, dict) else obj
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise UserError(f'{path}: expected a JSON list of integer ids or {{"ids": [...]}}')
    return ids


def _cmd_detokenize(args: argparse.Namespace) -> int:
    ids = _read_ids_json(args.ids)
    out = pathlib.Path(args.output)
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: output folder does not exist")
    try:
        write_midi(ids, out)
    except ValueError as exc:
        raise UserError(f"{args.ids}: {exc}") from None
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror})") from None
    print(f"wrote {out}")
    return 0


def _cmd_prepare_data(args: argparse.Namespace) -> int:
    if args.midi_dir:
        root = pathlib.Path(args.midi_dir)
        if not root.is_dir():
            raise UserError(f"{root}: not a folder")
        sources = dataset.folder_sources(root)
        if not any(sources.values()):
            raise UserError(f"{root}: no .mid/.midi files found")
    else:
        root = pathlib.Path(args.maestro)
        if not root.is_dir():
            raise UserError(f"{root}: MAESTRO folder not found (pass --maestro DIR)")
        try:
            sources = dataset.maestro_sources(root)
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
    ensure_out_dir(args.out)  # one line if --out is a file or cannot be created
    splits = args.split or list(dataset.SPLITS)
    try:
        results = dataset.prepare(sources, args.out, splits, workers=args.workers)
    except dataset.ForeignFolderError as exc:
        raise UserError(str(exc)) from None
    for r in results:
        note = " (already done, skipped)" if r.get("skipped") else ""
        print(
            f"{r['split']:>10}: {r['pieces']} pieces, {r['tokens']:,} tokens, "
            f"{len(r['failures'])} failed{note}"
        )
        for f in r["failures"]:
            print(f"  failed: {f['error']}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perceiver-midi",
        description="Piano music continuation with a Perceiver AR (MAESTRO performance tokens).",
    )
    one_line_errors(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tokenize", help="MIDI files -> one JSON line of ids per file")
    one_line_errors(p)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--sos", action="store_true", help="start each sequence with SOS (id 2)")
    p.add_argument("--eos", action="store_true", help="end each sequence with EOS (id 1)")
    p.set_defaults(func=_cmd_tokenize)

    p = sub.add_parser("detokenize", help="ids (JSON) -> MIDI file")
    one_line_errors(p)
    p.add_argument("ids", metavar="IDS.json", help="a JSON list of ids, a tokenize line, or -")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mid")
    p.set_defaults(func=_cmd_detokenize)

    p = sub.add_parser("prepare-data", help="tokenize MAESTRO (or a MIDI folder) for training")
    one_line_errors(p)
    p.add_argument("--maestro", default=str(DEFAULT_MAESTRO), help="MAESTRO v3 folder")
    p.add_argument("--midi-dir", help="a folder of your own MIDI files instead of MAESTRO")
    p.add_argument("--out", required=True, help="work folder for the token arrays")
    p.add_argument("--split", action="append", choices=["train", "validation", "test"])
    p.add_argument(
        "--workers", type=nonnegative_int, default=0, help="processes (default 0: all cores)"
    )
    p.set_defaults(func=_cmd_prepare_data)

    train_cli.add_commands(sub)
    generate_cli.add_commands(sub)  # continue, generate, infill, render
    batch_cli.add_commands(sub)  # batch
    web.add_commands(sub)  # the Gradio app
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: one line unless debugging
        if os.environ.get("PERCEIVER_MIDI_DEBUG"):
            raise
        first = (str(exc).strip().splitlines() or [""])[0]
        first = first if len(first) <= 300 else first[:297] + "..."
        print(f"error: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
