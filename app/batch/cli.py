"""The ``batch`` command: continue (or infill) every prime of a folder or listing into a folder,
with a manifest; the CLI's sampling, window and output options, per-prime columns (``ROW_KEYS``)."""

from __future__ import annotations

import argparse
import os

from perceiver_midi.app.batch.plan import ROW_KEYS
from perceiver_midi.app.batch.run import run_batch
from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.generate_cli import (
    _add_output,
    _add_sampling,
    _add_window,
    _one_line_errors,
    _positive_int,
    output_options_from_args,
    settings_from_args,
)


def cmd_batch(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    options = output_options_from_args(args)
    if args.workers is not None and args.ray is None:
        raise UserError("--workers needs --ray")
    summary = run_batch(
        args.primes,
        args.out,
        defaults=settings,
        base_seed=args.seed,
        options=options,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        ray_address=args.ray,
        workers=args.workers,
    )
    rate = summary.done / summary.elapsed if summary.elapsed > 0 else 0.0
    print(
        f"batch: {summary.done} done, {summary.skipped} skipped (already in the manifest), "
        f"{len(summary.failed)} failed; {summary.music_seconds:.1f} s of music, "
        f"{summary.tokens} tokens in {summary.elapsed:.1f} s ({rate:.2f} items/s)"
    )
    print(f"manifest: {os.path.join(summary.out_dir, 'manifest.jsonl')}")
    reasons: dict[str, list[str]] = {}
    for f in summary.failed:
        reasons.setdefault(f["reason"], []).append(f["id"])
    for reason, ids in reasons.items():
        print(f"  failed ({len(ids)} item{'s' if len(ids) > 1 else ''}): {reason}")
    return 1 if summary.failed and not summary.done and not summary.skipped else 0


def add_commands(sub) -> None:
    """Adds ``batch`` to ``perceiver-midi``."""
    p = sub.add_parser(
        "batch",
        help="dataset generation from a folder or CSV/JSONL of primes, with a manifest",
        description=(
            "Continue every prime of PRIMES (a folder of MIDI files, or a CSV/JSONL listing with "
            "a 'prime' column, paths relative to the listing, and optional per-prime columns: "
            f"{', '.join(ROW_KEYS[1:])}) into DIR, with one line per output in "
            "DIR/manifest.jsonl and failures in DIR/failed.jsonl. A row with an infill_range "
            "(START:END seconds) regenerates that span instead (as `infill`; the run then uses "
            "the infilling model unless --checkpoint names one). Item seeds derive from --seed "
            "and the prime's identity. Re-running skips finished items."
        ),
    )
    p.add_argument("primes", metavar="PRIMES")
    _add_sampling(p, batch=True)
    _add_window(p)
    _add_output(p, out_default=None, audio="none")
    g = p.add_argument_group("throughput")
    g.add_argument(
        "--batch-size",
        type=_positive_int,
        default=8,
        metavar="N",
        help="items per sampler call (default 8)",
    )
    g.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray: a local Ray by default, or an existing cluster at ADDRESS",
    )
    g.add_argument(
        "--workers", type=_positive_int, metavar="N", help="Ray workers (default: cluster CPUs)"
    )
    p.set_defaults(func=cmd_batch)
    _one_line_errors(p)
