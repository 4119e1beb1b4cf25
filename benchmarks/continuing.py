"""Does a continuation continue *this* music? Metrics, and primes made of one obvious figure.

    python benchmarks/continuing.py [--checkpoint DIR] [--draws 2]   # figured primes (minutes)
    python benchmarks/continuing.py --example [--draws 2]            # the README's quick start
    python benchmarks/continuing.py --infill [--draws 2]             # a span of each regenerated
    python benchmarks/continuing.py --maestro-windows DATA  # real windows that look quantized

The metrics (``continuing_features``: figure and rhythm reuse, self-repetition, pitch variety,
key fit; ``retrieval_mrr``) are in ``benchmarks/music_metrics.py``.

Figured primes (``figured_primes()``): twelve 20 s primes the project writes itself (no MAESTRO),
each one obvious accompaniment figure over a moving harmony (I-vi-IV-V, a bar per chord):
Alberti bass, a rising broken chord in sixteenths (the Bach-prelude texture), a waltz (bass note,
then two chords), a rock-style ostinato in eighths, a four-voice chorale in quarter notes, and a
melody over an Alberti bass; in C, G, E-flat and A, at 84-126 bpm; half of them quantized (as a
DAW sketch is), half with human timing (onsets moved by up to +-15 ms, velocities by +-8, seeded).
Each prime is continued (20 s) through the pipeline every surface uses with the shipped default
settings, ``--draws`` times (draw k: seeds ``1000 * k + i``). "Figure kept" is ``reuse(prime,
continuation, 4)``; the primes' own second halves keep ~1.0 of their first halves' 4-grams.

``--flip-timing`` swaps which half is quantized (same figures, keys and tempi, the other timing):
the control that separates timing from the figure. The summary gives "figure kept" for the
quantized and the played primes apart. ``--humanize`` sets what the model hears of a quantized
prime (``Settings.humanize``; default: the shipped one).

Writes ``benchmarks/results/continuing.json`` (merged per checkpoint) and a piano roll of every
prime and its first draw's continuation (``--rolls``, default
``benchmarks/results/continuing_rolls.png``: our own primes, nothing from MAESTRO).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.music_metrics import (  # noqa: E402
    continuing_features,
    notes_of,
    reuse,
    two_pitch_run,
)

RESULTS = ROOT / "benchmarks" / "results" / "continuing.json"
ROLLS = ROOT / "benchmarks" / "results" / "continuing_rolls.png"
PRIME_S = 20.0
CONTINUATION_S = 20.0

# ----------------------------------------------------------------------------------------------
# Figured primes (our own material)
# ----------------------------------------------------------------------------------------------

# Chords as semitones above the key's tonic: I, vi, IV, V (root position triads).
PROGRESSION = ((0, 4, 7), (9, 12, 16), (5, 9, 12), (7, 11, 14))
KEYS = {"C": 48, "G": 43, "Eb": 51, "A": 45}  # the bass register's tonic (C3 = 48)


def _figure_notes(kind: str, tonic: int, bpm: float) -> list[tuple[int, float, float, int]]:
    """(pitch, start beat, length in beats, velocity) of PRIME_S seconds of one figure."""
    beats_per_bar = 3 if kind == "waltz" else 4
    bars = int(math.ceil(PRIME_S / (60.0 / bpm) / beats_per_bar))
    out = []
    for bar in range(bars):
        chord = [tonic + c for c in PROGRESSION[bar % len(PROGRESSION)]]
        b0 = bar * beats_per_bar
        root, third, fifth = chord
        if kind in ("alberti", "melody"):
            for i, p in enumerate([root, fifth, third, fifth] * 2):
                out.append((p, b0 + 0.5 * i, 0.5, 62))
            if kind == "melody":  # a stepwise tune an octave and more above
                tune = [third + 12, fifth + 12, third + 14, root + 12 + 12]
                for i, p in enumerate(tune):
                    out.append((p, b0 + i, 1.0, 80))
        elif kind == "broken":
            for i, p in enumerate([root, third, fifth, root + 12, third + 12, fifth + 12] * 3):
                if i < 16:
                    out.append((p, b0 + 0.25 * i, 0.25, 66))
        elif kind == "waltz":
            out.append((root - 12, b0, 1.0, 72))
            for beat in (1, 2):
                for p in (third, fifth, root + 12):
                    out.append((p, b0 + beat, 0.9, 58))
        elif kind == "ostinato":
            for i, p in enumerate([root, root + 12, fifth, root + 12] * 2):
                out.append((p, b0 + 0.5 * i, 0.45, 70))
        elif kind == "chorale":
            for beat in range(4):
                voicing = [root - 12, fifth, third + 12, root + 24]
                if beat % 2:
                    voicing = [root - 12, third, fifth + 12, third + 24]
                for p in voicing:
                    out.append((p, b0 + beat, 0.95, 64))
        else:
            raise ValueError(f"unknown figure {kind!r}")
    return out


FIGURES = (
    ("alberti", "C", 120),
    ("alberti", "Eb", 96),
    ("broken", "C", 84),
    ("broken", "A", 100),
    ("waltz", "G", 126),
    ("waltz", "Eb", 108),
    ("ostinato", "A", 112),
    ("ostinato", "G", 96),
    ("chorale", "C", 90),
    ("chorale", "Eb", 72),
    ("melody", "G", 100),
    ("melody", "A", 88),
)


def figured_primes(seed: int = 0, flip_timing: bool = False) -> list[dict]:
    """The figured primes: ``{"name", "ids"}`` in ``FIGURES`` order; odd ones with human timing
    (even ones with ``flip_timing``)."""
    from perceiver_midi.tokenizer import Note, encode, notes_to_pretty_midi

    rng = np.random.default_rng(seed)
    out = []
    for i, (kind, key, bpm) in enumerate(FIGURES):
        human = (i % 2 == 1) != flip_timing
        beat_s = 60.0 / bpm
        notes = []
        for pitch, start_b, len_b, vel in _figure_notes(kind, KEYS[key], bpm):
            start = start_b * beat_s
            if start >= PRIME_S:
                continue
            end = min(start + len_b * beat_s, PRIME_S)
            if human:
                start = max(0.0, start + rng.uniform(-0.015, 0.015))
                end = max(start + 0.03, end + rng.uniform(-0.015, 0.015))
                vel = int(np.clip(vel + rng.integers(-8, 9), 1, 127))
            notes.append(Note(int(pitch), int(vel), float(start), float(end)))
        ids = encode(notes_to_pretty_midi(notes))
        name = f"{kind}-{key}-{bpm}{'-human' if human else ''}"
        out.append({"name": name, "ids": np.asarray(ids, np.int32)})
    return out


# ----------------------------------------------------------------------------------------------
# Runner
# ----------------------------------------------------------------------------------------------


POOLED = ("rhythm_reuse", "self_repetition", "distinct_pitches", "pitch_class_entropy")


def run_figured(
    model, draws: int = 2, batch: int = 12, settings=None, flip_timing: bool = False
) -> dict:
    """Continue every figured prime ``draws`` times; per prime and pooled metrics."""
    from perceiver_midi.app.core.pipeline import Settings, sample_continuations

    settings = settings or Settings(seconds=CONTINUATION_S)
    primes = figured_primes(flip_timing=flip_timing)
    rows, rolls = [], []
    for k in range(draws):
        ids = [p["ids"] for p in primes]
        seeds = [1000 * k + i for i in range(len(primes))]
        conts = []
        for i in range(0, len(ids), batch):
            conts += sample_continuations(model, ids[i : i + batch], seeds[i : i + batch], settings)
        for p, c in zip(primes, conts, strict=True):
            prime_notes = notes_of(p["ids"])
            cont_notes = notes_of(c.continuation_ids())
            feats = continuing_features(prime_notes, cont_notes)
            rows.append({"prime": p["name"], "draw": k, **feats, "notes": len(cont_notes)})
            if k == 0:
                rolls.append((p["name"], prime_notes, cont_notes))
    # The primes' own halves: what "kept" means for the figure itself.
    halves = []
    for p in primes:
        notes = notes_of(p["ids"])
        first = notes[notes[:, 2] < PRIME_S / 2]
        second = notes[notes[:, 2] >= PRIME_S / 2]
        halves.append(reuse(first, second))
    kept = np.array([r["prime_reuse"] for r in rows], np.float64)
    summary = {
        "figure_kept": float(np.nanmean(kept)),
        "figure_kept_by_draw": [
            float(np.nanmean([r["prime_reuse"] for r in rows if r["draw"] == k]))
            for k in range(draws)
        ],
        **{
            f"figure_kept_{kind}": float(
                np.nanmean(
                    [r["prime_reuse"] for r in rows if r["prime"].endswith("-human") == played]
                )
            )
            for kind, played in (("quantized", False), ("played", True))
        },
        "prime_halves_kept": float(np.mean(halves)),
        **{key: float(np.nanmean([r[key] for r in rows])) for key in POOLED},
        "draws": draws,
        "primes": len(primes),
    }
    return {"summary": summary, "rows": rows, "rolls": rolls}


EXAMPLE = ROOT / "examples" / "bach_prelude_c.mid"


def run_example(model, settings, variations: int = 2) -> dict:
    """The README's quick start (``perceiver-midi continue examples/bach_prelude_c.mid --seconds
    20 --variations 2``, the default window): of each variation's interval 4-grams, the share that
    occurs in the prime, and its longest run on at most two pitches."""
    from perceiver_midi.app.core.pipeline import continue_prime
    from perceiver_midi.tokenizer.retime import looks_quantized

    conts = continue_prime(model, str(EXAMPLE), settings.replace(variations=variations))
    prime_notes = notes_of(conts[0].prime)
    cont_notes = [notes_of(c.continuation_ids()) for c in conts]
    return {
        "prime_looks_quantized": looks_quantized(conts[0].prime),
        "kept_by_variation": [reuse(prime_notes, n) for n in cont_notes],
        "two_pitch_run_by_variation": [two_pitch_run(n) for n in cont_notes],
        "rolls": [("bach_prelude_c", prime_notes, n) for n in cont_notes],
    }


INFILL_SPAN = (8.0, 12.0)  # --infill: the span of each figured prime regenerated (seconds)


def run_figured_infill(model, draws: int, settings) -> dict:
    """Regenerate ``INFILL_SPAN`` of every figured prime ``draws`` times (the infilling pipeline
    every surface uses); "figure kept" of each new middle: its interval 4-grams found in the
    prime, for the quantized and played primes apart."""
    from perceiver_midi.app.core.infill import Gap, infill_items

    rows = []
    for i, p in enumerate(figured_primes()):
        seeds = [1000 * k + i for k in range(draws)]
        filled = infill_items(model, p["ids"], Gap(*INFILL_SPAN), settings, seeds, range(draws))
        for k, f in enumerate(filled):
            kept = reuse(notes_of(p["ids"]), notes_of(f.middle))
            rows.append({"prime": p["name"], "draw": k, "prime_reuse": kept})
    kept = {
        kind: float(
            np.nanmean([r["prime_reuse"] for r in rows if r["prime"].endswith("-human") == h])
        )
        for kind, h in (("quantized", False), ("played", True))
    }
    return {
        "middle_kept": float(np.nanmean([r["prime_reuse"] for r in rows])),
        **{f"middle_kept_{k}": v for k, v in kept.items()},
        "span": list(INFILL_SPAN),
        "draws": draws,
        "per_prime": rows,
    }


def maestro_windows(data: str, tokens: int = 1200, every: int = 5000) -> dict:
    """How many MAESTRO windows (``tokens`` long, one every ``every`` tokens of each validation
    and test piece of a prepared data dir) look quantized: what ``--humanize auto`` would change
    on real primes."""
    from perceiver_midi.tokenizer.dataset import load_split
    from perceiver_midi.tokenizer.retime import looks_quantized

    out = {}
    for split in ("validation", "test"):
        pieces = load_split(data, split)
        flags = [
            looks_quantized(piece[start : start + tokens])
            for piece in (np.asarray(pieces.piece(k), np.int32) for k in range(len(pieces)))
            for start in range(0, max(1, piece.size - tokens), every)
        ]
        out[split] = {"windows": len(flags), "look_quantized": int(np.sum(flags))}
    return out


def draw_rolls(path: pathlib.Path, rolls: list) -> None:
    """Piano rolls: each prime (grey) and its continuation (blue), one row per prime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.env import save_png

    fig, axes = plt.subplots(len(rolls), 1, figsize=(12, 1.3 * len(rolls)), squeeze=False)
    for ax, (name, prime, cont) in zip(axes[:, 0], rolls, strict=True):
        for notes, offset, color in ((prime, -PRIME_S, "0.45"), (cont, 0.0, "tab:blue")):
            for pitch, _vel, start, end in notes:
                ax.plot([start + offset, end + offset], [pitch, pitch], color=color, lw=2)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlim(-PRIME_S, CONTINUATION_S)
        ax.set_ylabel(name, rotation=0, ha="right", fontsize=7)
        ax.tick_params(labelsize=6)
    axes[-1, 0].set_xlabel("seconds (prime before 0, continuation after)")
    fig.tight_layout()
    save_png(fig, path, dpi=80)


def _record(out: str, key: str, entry: dict) -> None:
    """Merges ``entry`` under ``key`` into the results file ``out``."""
    from benchmarks.env import write_json

    path = pathlib.Path(out)
    results = json.loads(path.read_text()) if path.exists() else {}
    results[key] = entry
    write_json(path, results)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import (
        add_checkpoint_flag,
        add_out_flag,
        add_rolls_flag,
        environment,
        rolls_path,
    )

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_checkpoint_flag(p)
    p.add_argument("--draws", type=int, default=2)
    p.add_argument("--top-p", type=float, help="sampler top-p (default: the shipped default)")
    p.add_argument("--temperature", type=float, help="sampler temperature (default: 1)")
    p.add_argument("--min-p", type=float, help="min-p sampling (default: the shipped default)")
    p.add_argument("--max-polyphony", type=int, help="polyphony cap (default: the shipped one)")
    p.add_argument("--guidance", type=float, help="context guidance (default: the shipped one)")
    p.add_argument("--guidance-tokens", type=int, help="guidance window (default: the shipped one)")
    p.add_argument(
        "--humanize", help="what the model hears of a quantized prime (default: the shipped one)"
    )
    p.add_argument(
        "--flip-timing", action="store_true", help="quantize the other half of the primes"
    )
    p.add_argument(
        "--example",
        action="store_true",
        help="instead: the README's quick start (examples/bach_prelude_c.mid; --draws variations)",
    )
    p.add_argument(
        "--infill",
        action="store_true",
        help=f"instead: regenerate {INFILL_SPAN[0]:g}-{INFILL_SPAN[1]:g} s of every figured prime "
        "(--draws times) and measure the new middles",
    )
    p.add_argument(
        "--maestro-windows",
        metavar="DATA",
        help="instead: count the windows of a prepared data dir's validation and test pieces "
        "that look quantized (no model)",
    )
    p.add_argument("--label", help="the result's key (default: the checkpoint)")
    add_out_flag(p, RESULTS)
    add_rolls_flag(p, ROLLS, "piano rolls of the primes and first continuations (PNG)")
    args = p.parse_args(argv)

    from perceiver_midi.app.core.pipeline import Settings
    from perceiver_midi.model.checkpoint import default_checkpoint, load_model

    ckpt = args.checkpoint or str(default_checkpoint())
    flags = (
        "top_p", "temperature", "min_p", "max_polyphony", "guidance", "guidance_tokens", "humanize"
    )  # fmt: skip
    extra = {k: getattr(args, k) for k in flags if getattr(args, k) is not None}
    settings = Settings(seconds=CONTINUATION_S, **extra)
    t0 = time.perf_counter()
    if args.maestro_windows:
        entry = {"windows": maestro_windows(args.maestro_windows), "environment": environment()}
        _record(args.out, "MAESTRO windows that look quantized", entry)
        print(json.dumps(entry["windows"]))
        return 0
    model = load_model(ckpt)
    if args.infill:
        entry = run_figured_infill(model, args.draws, settings)
        entry |= {"settings": {k: getattr(settings, k) for k in flags}}
        _record(args.out, f"infilled span: {args.label or ckpt}", entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "per_prime"}))
        return 0
    if args.example:
        example = run_example(model, settings, args.draws)
        entry = {k: v for k, v in example.items() if k != "rolls"}
        entry |= {"settings": {k: getattr(settings, k) for k in flags}}
        _record(args.out, f"README example: {args.label or ckpt}", entry)
        if (png := rolls_path(args.rolls)) is not None:
            draw_rolls(png, example["rolls"])
        print(json.dumps(entry))
        return 0
    result = run_figured(model, args.draws, settings=settings, flip_timing=args.flip_timing)
    entry = {
        **result["summary"],
        "flip_timing": args.flip_timing,
        "settings": {k: getattr(settings, k) for k in flags},
        "per_prime": result["rows"],
        "seconds": round(time.perf_counter() - t0, 1),
        "environment": environment(),
    }
    _record(args.out, args.label or ckpt, entry)
    if (png := rolls_path(args.rolls)) is not None:
        draw_rolls(png, result["rolls"])
    print(json.dumps(result["summary"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
