"""Continuations as music: do generated continuations look like a pianist's, note for note?

    python benchmarks/quality.py                      # 32 validation primes, 20 s each (minutes)
    python benchmarks/quality.py --quick              # 4 primes, 5 s: a smoke run, no bar judged
    python benchmarks/quality.py --checkpoint DIR --pieces 16 --skip-nll
    python benchmarks/quality.py --draws 3            # every prime sampled 3 times, pooled
    python benchmarks/quality.py --split test         # held-out primes (settings are tuned on
                                                      # validation; test confirms them once)

What is measured (results in ``benchmarks/results/quality.json``, written atomically):
  * primes: pieces of the MAESTRO v3 **validation** split (``--split test``: the test split),
    sorted by file name, those with at least 100 s of music, evenly spread (piece i of n is
    eligible piece ``i * eligible // n``); the prime is the window 60-80 s (``--prime-range
    60:80`` in the CLI), piece i is sampled with seed ``--seed + i``, through the pipeline every
    surface uses (``app.core.pipeline.prime_ids``, ``sample_continuations``, the shipped default
    settings of ``app.core.pipeline.Settings``: temperature 1, top-k off, top-p 0.93, the 4 s
    longest note and the polyphony cap 16, stop at EOS), ``--batch`` primes per sampler call.
  * three sets of 20 s continuations of each prime:
      real       the piece's own 80-100 s (tokenized from the MIDI file, sustain applied, cut
                 with ``tokenizer.cut_range``);
      generated  the model's continuation (``Continuation.continuation_ids()``, the MIDI a user
                 downloads);
      looped     the prime replayed from the split (a floor: real music, but not a continuation).
    Notes come from ``tokenizer.decode_notes`` for all three (identical note extraction). Notes
    sounding across the split (started in the prime) belong to neither continuation (except
    for the longest silence, below).
  * features per continuation: mean polyphony (sounding notes at the midpoints of 50 ms steps),
    note duration median / p90, share of notes held > 4 s and > 8 s, note density (notes/s),
    pitch range and std, velocity mean and std, median inter-onset interval (between distinct
    onset times, so a chord is one onset), longest silence (no note sounding, the stretches
    before the first note and after the last one included; notes of the prime still sounding
    after the split count as sounding here, and only here).
  * token diagnostics of the generated (and, for reference, the real) token streams, read in the
    context of the prime: share of NOTE_OFFs whose pitch is not sounding (no-op offs), share of
    NOTE_ONs never closed before the end, prime notes open at the split still open at the end,
    tokens per continuation.
  * per set: the mean of each feature over pieces and its ratio to the real mean (the headline),
    and for each feature the overlapping area of the per-piece distributions of that set and of
    the real set (Yang & Lerch 2020): two Gaussian KDEs with one shared bandwidth, Silverman's
    rule of thumb on the pooled within-set standard deviation, ``h = 1.06 * s * n^(-1/5)``
    (n = mean set size). A shared bandwidth keeps a set with no spread (e.g. no note held > 8 s
    anywhere) from collapsing to a spike, and identical sets overlap exactly 1.
  * NLL (nats/token) of the checkpoint on the training run's fixed validation subset
    (``model.train.validation_subset(validation, 24, 2048)``, ``model.evaluate.evaluate``);
    ``--skip-nll`` leaves it out.
  * bars (the product card's "sound like a pianist"), printed last: polyphony ratio in 0.7-1.3,
    note density ratio in 0.7-1.3, and the share of generated notes held > 8 s (all pieces
    pooled) at most 2x the real share, where the real share is taken as at least 1 / (number of
    real notes), so a real share of 0 still allows a single long note per ~all the real notes.
    Bars are judged only on a full run (>= 32 pieces, 20 s); ``--quick`` and smaller runs record
    ``"met": null``. With ``--draws K`` every prime is continued K times (draw k: seeds
    ``seed + k * max(100, pieces) + i``); features, overlaps and bars pool the K draws, and each
    bar also records every draw's own value (``by_draw``): one draw of 32 primes moves a trained
    checkpoint's polyphony ratio by up to ~0.3, so ship decisions use several draws.

MAESTRO is CC BY-NC-SA 4.0: the JSON holds piece names and feature numbers only, never ids or
notes. The piano-roll PNG (``--rolls``, default ``work/quality/quality_rolls.png``, git-ignored)
shows MAESTRO excerpts (the primes and real continuations), so it is never written under
``benchmarks/results/``.

The features, overlaps, overall score and bars are functions of ``benchmarks/music_metrics.py``;
this script chooses the primes, samples, applies them and writes the results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.music_metrics import (  # noqa: E402
    DRIFT_SEGMENT_S,
    FEATURES,
    SETS,
    bars,
    carried_notes,
    continuing_features,
    diagnostics_summary,
    drift_summary,
    features,
    held_share,
    looped_notes,
    notes_of,
    overall_score,
    polyphony_by_segment,
    retrieval_mrr,
    retrieval_vector,
    summarise,
    token_diagnostics,
)
from perceiver_midi.app.core.errors import UserError  # noqa: E402
from perceiver_midi.tokenizer import constants as C  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "quality.json"
ROLLS = ROOT / "work" / "quality" / "quality_rolls.png"

PRIME_START_S = 60.0  # the prime window is 60-80 s of each piece
SPLIT_S = 80.0  # where the continuation starts
CONTINUATION_S = 20.0
MIN_PIECE_S = 100.0  # pieces with less music are skipped
DEFAULT_PIECES = 32
QUICK_PIECES = 4
QUICK_SECONDS = 5.0
DEFAULT_BATCH = 16
DEFAULT_SEED = 0
# One draw per prime is noisy (a second draw moved a checkpoint's polyphony ratio by 0.3):
# --draws K samples every prime K times, draw k with seeds seed + k * stride + i, where
# stride = max(DRAW_SEED_STRIDE, pieces) keeps every seed distinct; with 32 pieces --draws 3
# repeats the runs of --seed 0, 100 and 200. The summary and the bars pool all draws.
DRAW_SEED_STRIDE = 100
MAX_DRAWS = 8

NLL_PIECES = 24  # the training run's validation subset
NLL_TOKENS = 2048
QUICK_NLL_PIECES = 4

ROLL_PRIMES = 4
ROLL_STEP_S = 0.05
ROLL_LOW_PITCH, ROLL_HIGH_PITCH = 21, 108  # the piano's keys
ROLL_COLORS = {"prime": (0.6, 0.6, 0.6), "real": (0.1, 0.35, 0.8), "generated": (0.85, 0.4, 0.05)}


# ----------------------------------------------------------------------------------------------
# Primes, generation, NLL
# ----------------------------------------------------------------------------------------------


def choose_pieces(maestro: pathlib.Path, n: int, split: str = "validation") -> list[dict]:
    """Pieces of ``split`` sorted by name, >= 100 s of music with notes in the prime window and in
    the real continuation, evenly spread; returns [{"name", "path", "ids", "seconds"}]."""
    from perceiver_midi.tokenizer import cut_range, encode, music_seconds
    from perceiver_midi.tokenizer.dataset import maestro_sources

    try:
        sources = sorted(maestro_sources(maestro)[split], key=lambda s: s.name)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    eligible = []
    for s in sources:
        ids = encode(s.path)
        seconds = music_seconds(ids)
        if seconds < MIN_PIECE_S:
            continue
        prime = cut_range(ids, PRIME_START_S, SPLIT_S)
        real = cut_range(ids, SPLIT_S, SPLIT_S + CONTINUATION_S)
        if _has_note_on(prime) and _has_note_on(real):
            eligible.append({"name": s.name, "path": s.path, "ids": ids, "seconds": seconds})
    if n > len(eligible):
        raise UserError(
            f"--pieces {n}: only {len(eligible)} {split} pieces qualify "
            f"(>= {MIN_PIECE_S:g} s of music, notes in both windows)"
        )
    return [eligible[(i * len(eligible)) // n] for i in range(n)]


def _has_note_on(ids) -> bool:
    ids = np.asarray(ids)
    return bool(np.any((ids >= C.NOTE_ON_FIRST_ID) & (ids < C.NOTE_OFF_FIRST_ID)))


def generate(model, primes, seeds, settings, batch: int):
    """Continuations of every prime, ``batch`` primes per sampler call, with a progress bar."""
    from tqdm.auto import tqdm

    from perceiver_midi.app.core.pipeline import sample_continuations

    out = []
    bar = tqdm(total=round(len(primes) * settings.seconds), unit="s", desc="music generated")
    for i in range(0, len(primes), batch):
        done_before = len(out) * settings.seconds

        def progress(info, base=done_before):
            bar.n = round(base + float(np.minimum(info.seconds, settings.seconds).sum()))
            bar.refresh()
            return False

        out += sample_continuations(
            model, primes[i : i + batch], seeds[i : i + batch], settings, callback=progress
        )
    bar.n = bar.total
    bar.close()
    return out


def validation_nll(model, data: pathlib.Path, maestro: pathlib.Path, pieces: int) -> dict:
    from perceiver_midi.app.train_cli import _ensure_data
    from perceiver_midi.model.evaluate import evaluate
    from perceiver_midi.model.train import validation_subset
    from perceiver_midi.tokenizer.dataset import load_split

    _ensure_data(data, maestro, ["validation"])
    subset = validation_subset(load_split(data, "validation"), pieces, NLL_TOKENS)
    result = evaluate(model, subset, batch_size=8)
    result["subset"] = f"validation_subset(validation, {pieces}, {NLL_TOKENS})"
    return result


# ----------------------------------------------------------------------------------------------
# Piano rolls (MAESTRO material: written only where git ignores it)
# ----------------------------------------------------------------------------------------------


def roll_image(prime: np.ndarray, prime_s: float, cont: np.ndarray, seconds: float, color):
    """RGB image [pitch, time] of the prime (grey, before 0) and a continuation (after 0)."""
    width = int(round((CONTINUATION_S + seconds) / ROLL_STEP_S))
    image = np.ones((ROLL_HIGH_PITCH - ROLL_LOW_PITCH + 1, width, 3))
    for notes, offset, rgb in (
        (prime, CONTINUATION_S - prime_s, ROLL_COLORS["prime"]),
        (cont, CONTINUATION_S, color),
    ):
        for pitch, velocity, start, end in notes:
            row = int(pitch) - ROLL_LOW_PITCH
            if not 0 <= row < image.shape[0]:
                continue
            a = int((start + offset) / ROLL_STEP_S)
            b = max(a + 1, int(math.ceil((end + offset) / ROLL_STEP_S)))
            shade = 0.35 + 0.65 * velocity / C.MAX_VELOCITY
            image[row, max(a, 0) : b] = 1 - shade * (1 - np.asarray(rgb))
    return image


def draw_rolls(path: pathlib.Path, rolls: list[dict], seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.env import save_png

    fig, axes = plt.subplots(len(rolls), 2, figsize=(12, 2.2 * len(rolls)), squeeze=False)
    extent = (-CONTINUATION_S, seconds, ROLL_LOW_PITCH - 0.5, ROLL_HIGH_PITCH + 0.5)
    for r, roll in enumerate(rolls):
        for c, which in enumerate(("real", "generated")):
            ax = axes[r, c]
            image = roll_image(
                roll["prime"], roll["prime_s"], roll[which], seconds, ROLL_COLORS[which]
            )
            ax.imshow(image, origin="lower", aspect="auto", extent=extent, interpolation="nearest")
            ax.axvline(0, color="k", linewidth=0.8)
            ax.set_title(f"{roll['name'][:60]}: {which}", fontsize=8)
            ax.tick_params(labelsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("seconds from the split (prime in grey)", fontsize=8)
    fig.tight_layout()
    save_png(fig, path, dpi=72)


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def _clean(x):
    """JSON-safe: NaN/inf -> null, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def print_table(summary: dict, diag: dict) -> None:
    print(
        f"\n{'feature':<22}{'real':>9}{'generated':>11}{'ratio':>7}{'overlap':>9}"
        f"{'looped':>9}{'ratio':>7}{'overlap':>9}"
    )
    for name in FEATURES:
        row = summary[name]
        g, lp = row["generated"], row["looped"]
        print(
            f"{name:<22}{_fmt(row['real']['mean']):>9}{_fmt(g['mean']):>11}"
            f"{_fmt(g['ratio']):>7}{_fmt(g['overlap'], 2):>9}{_fmt(lp['mean']):>9}"
            f"{_fmt(lp['ratio']):>7}{_fmt(lp['overlap'], 2):>9}"
        )
    print("\ntoken diagnostics (read after the prime; all pieces pooled):")
    for s in ("real", "generated"):
        d = diag[s]
        print(
            f"  {s:<10} tokens/continuation {d['tokens_mean']:.0f}, no-op NOTE_OFFs "
            f"{_fmt(100 * d['noop_off_share'])}%, NOTE_ONs never closed "
            f"{_fmt(100 * d['unclosed_on_share'])}%, prime notes open at the split "
            f"{d['carried_open']} (still open at the end: {d['carried_unclosed']})"
        )
    print(f"  generated stops: {diag['generated']['stops']}")


def parse_args(argv):
    from benchmarks.env import add_checkpoint_flag, add_note_flag, add_out_flag, add_rolls_flag
    from perceiver_midi.app.core.pipeline import (
        DEFAULT_GUIDANCE,
        DEFAULT_GUIDANCE_TOKENS,
        DEFAULT_MAX_NOTE_SECONDS,
        DEFAULT_MAX_POLYPHONY,
        DEFAULT_MIN_P,
        DEFAULT_TOP_P,
    )
    from perceiver_midi.app.train_cli import DEFAULT_DATA, DEFAULT_MAESTRO

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_flag(p)
    p.add_argument("--maestro", default=str(DEFAULT_MAESTRO), help="MAESTRO v3 folder")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="prepare-data output (for the NLL)")
    p.add_argument("--pieces", type=int, help=f"primes ({DEFAULT_PIECES})")
    p.add_argument(
        "--split",
        choices=("validation", "test"),
        default="validation",
        help="where the primes come from (validation; the NLL is always validation's)",
    )
    p.add_argument("--seconds", type=float, help=f"continuation length ({CONTINUATION_S:g})")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="piece i uses seed + i (0)")
    p.add_argument(
        "--prime-start",
        type=float,
        default=PRIME_START_S,
        help=f"the prime window starts here, in seconds, and ends at {SPLIT_S:g} "
        f"(default {PRIME_START_S:g}; 0: the piece's own beginning, a long prime)",
    )
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH, help="primes per sampler call")
    p.add_argument(
        "--draws",
        type=int,
        default=1,
        help=f"continuations per prime, pooled (1; draw k uses seeds seed + k * "
        f"max({DRAW_SEED_STRIDE}, pieces) + i; at most {MAX_DRAWS})",
    )
    p.add_argument(
        "--max-note-seconds",
        type=float,
        metavar="S",
        help="longest-note limit while sampling (as perceiver-midi continue: default "
        f"{DEFAULT_MAX_NOTE_SECONDS:g}, 0 = none)",
    )
    p.add_argument(
        "--max-polyphony",
        type=int,
        metavar="N",
        help="no new note while N sound (as perceiver-midi continue: default "
        f"{DEFAULT_MAX_POLYPHONY}, 0 = none)",
    )
    p.add_argument(
        "--temperature", type=float, help="sampling temperature (as perceiver-midi continue: 1)"
    )
    p.add_argument(
        "--top-p",
        type=float,
        help=f"nucleus sampling (as perceiver-midi continue: {DEFAULT_TOP_P:g})",
    )
    p.add_argument(
        "--min-p",
        type=float,
        help=f"min-p sampling (as perceiver-midi continue: {DEFAULT_MIN_P:g}, off)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        help=f"context guidance (as perceiver-midi continue: {DEFAULT_GUIDANCE:g})",
    )
    p.add_argument(
        "--guidance-tokens",
        type=int,
        metavar="K",
        help=f"the guidance's short window (as perceiver-midi continue: {DEFAULT_GUIDANCE_TOKENS})",
    )
    p.add_argument("--latents", type=int, help="latents while sampling (default: the model's)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_PIECES} pieces, {QUICK_SECONDS:g} s; no bar is judged",
    )
    p.add_argument("--skip-nll", action="store_true", help="leave out the validation NLL")
    add_out_flag(p, RESULTS)
    add_rolls_flag(p, ROLLS, "piano-roll PNG (MAESTRO excerpts: keep it git-ignored)")
    add_note_flag(p)
    args = p.parse_args(argv)
    if args.pieces is None:
        args.pieces = QUICK_PIECES if args.quick else DEFAULT_PIECES
    if args.seconds is None:
        args.seconds = QUICK_SECONDS if args.quick else CONTINUATION_S
    if args.pieces < 1:
        raise UserError(f"--pieces must be at least 1, got {args.pieces}")
    if not (args.seconds > 0 and args.seconds <= CONTINUATION_S):
        raise UserError(f"--seconds must be in (0, {CONTINUATION_S:g}], got {args.seconds:g}")
    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if not 1 <= args.draws <= MAX_DRAWS:
        raise UserError(f"--draws must be in [1, {MAX_DRAWS}], got {args.draws}")
    if not 0 <= args.prime_start < SPLIT_S:
        raise UserError(f"--prime-start must be in [0, {SPLIT_S:g}), got {args.prime_start:g}")
    if args.max_note_seconds is not None:
        from perceiver_midi.app.core.pipeline import MAX_NOTE_SECONDS, as_float

        as_float(args.max_note_seconds, "--max-note-seconds", 0, MAX_NOTE_SECONDS)
    if not (pathlib.Path(args.maestro) / "maestro-v3.0.0.csv").exists():
        raise UserError(f"{args.maestro}: no maestro-v3.0.0.csv (pass --maestro)")
    return args


def run(args) -> dict:
    from benchmarks.env import environment, rolls_path
    from perceiver_midi.app.core.pipeline import Settings, Window, prime_ids
    from perceiver_midi.model.checkpoint import (
        CheckpointError,
        default_checkpoint,
        load_model,
        read_info,
    )
    from perceiver_midi.tokenizer import cut_range, music_seconds

    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    ckpt = args.checkpoint or default_checkpoint()
    if ckpt is None:
        raise UserError("no shipped checkpoint found; pass --checkpoint DIR")
    try:
        info = read_info(ckpt)
        model = load_model(ckpt)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None

    maestro = pathlib.Path(args.maestro)
    chosen = choose_pieces(maestro, args.pieces, args.split)
    window = Window.range(args.prime_start, SPLIT_S)
    settings = Settings(
        seconds=args.seconds,
        seed=args.seed,
        window=window,
        # the pipeline's default unless given (0: no limit)
        **({} if args.max_note_seconds is None else {"max_note_seconds": args.max_note_seconds}),
        **({} if args.max_polyphony is None else {"max_polyphony": args.max_polyphony}),
        **({} if args.temperature is None else {"temperature": args.temperature}),
        **({} if args.top_p is None else {"top_p": args.top_p}),
        **({} if args.min_p is None else {"min_p": args.min_p}),
        **({} if args.guidance is None else {"guidance": args.guidance}),
        **({} if args.guidance_tokens is None else {"guidance_tokens": args.guidance_tokens}),
        **({} if args.latents is None else {"latents": args.latents}),
    )
    n_primes = len(chosen)  # row i is prime i % n_primes of draw i // n_primes
    stride = max(DRAW_SEED_STRIDE, n_primes)
    primes = [prime_ids(p["path"], window, name=p["name"]) for p in chosen] * args.draws
    seeds = [args.seed + k * stride + i for k in range(args.draws) for i in range(n_primes)]
    chosen = chosen * args.draws
    print(
        f"checkpoint {ckpt}; {n_primes} {args.split} primes "
        f"({window.describe()}) x {args.draws} draw(s), {args.seconds:g} s continuations, "
        f"seeds {seeds[0]}..{seeds[-1]}",
        flush=True,
    )

    t0 = time.perf_counter()
    conts = generate(model, primes, seeds, settings, args.batch)
    generate_s = time.perf_counter() - t0

    pieces, rolls = [], []
    set_notes = {s: [] for s in SETS}
    roll_pieces = {(k * n_primes) // ROLL_PRIMES for k in range(ROLL_PRIMES)}  # of draw 0
    for i, (piece, prime, cont) in enumerate(zip(chosen, primes, conts, strict=True)):
        real_ids = cut_range(piece["ids"], SPLIT_S, SPLIT_S + args.seconds)
        prime_s = music_seconds(prime)
        prime_notes = notes_of(prime)
        notes = {
            "real": notes_of(real_ids),
            "generated": notes_of(cont.continuation_ids()),
            "looped": looped_notes(prime_notes, prime_s, args.seconds),
        }
        for s in SETS:
            set_notes[s].append(notes[s])
        row = {
            "index": i % n_primes,
            "draw": i // n_primes,
            "name": piece["name"],
            "seed": cont.seed,
            "piece_seconds": piece["seconds"],
            "prime_tokens": int(prime.size),
            "prime_seconds": prime_s,
            "prime_cut_to_context": cont.prime_cut,
        }
        carried = {
            "real": carried_notes(prime, real_ids, args.seconds),
            "generated": carried_notes(cont.prime, cont.ids, args.seconds),
            "looped": None,  # the replay starts afresh: nothing carries over
        }
        for s in SETS:
            row[s] = {
                "features": features(notes[s], args.seconds, carried[s])
                | continuing_features(prime_notes, notes[s]),
                "polyphony_by_segment": polyphony_by_segment(
                    notes[s], args.seconds, DRIFT_SEGMENT_S
                ),
            }
        row["real"]["tokens"] = token_diagnostics(prime, real_ids)
        row["generated"]["tokens"] = token_diagnostics(cont.prime, cont.ids)
        row["generated"]["stop"] = cont.stop
        row["generated"]["music_seconds"] = cont.seconds
        pieces.append(row)
        if i in roll_pieces:
            rolls.append(
                {
                    "name": piece["name"],
                    "prime": prime_notes,
                    "prime_s": prime_s,
                    "real": notes["real"],
                    "generated": notes["generated"],
                }
            )

    summary = summarise(pieces)
    diag = diagnostics_summary(pieces)
    vectors = {
        "prime": [retrieval_vector(notes_of(p), music_seconds(p)) for p in primes],
        **{
            s: [retrieval_vector(n, args.seconds) for n in set_notes[s]]
            for s in ("real", "generated")
        },
    }
    retrieval = {
        s: [
            retrieval_mrr(
                vectors["prime"][k * n_primes : (k + 1) * n_primes],
                vectors[s][k * n_primes : (k + 1) * n_primes],
            )
            for k in range(args.draws)
        ]
        for s in ("real", "generated")
    }
    score = overall_score(pieces)
    full = not args.quick and args.pieces >= DEFAULT_PIECES and args.seconds == CONTINUATION_S
    bar_rows = bars(summary, pieces, judged=full)

    nll = None
    nll_s = 0.0
    if not args.skip_nll:
        t0 = time.perf_counter()
        nll_pieces = QUICK_NLL_PIECES if args.quick else NLL_PIECES
        nll = validation_nll(model, pathlib.Path(args.data), maestro, nll_pieces)
        nll_s = time.perf_counter() - t0

    png = rolls_path(args.rolls)
    if png is not None:
        draw_rolls(png, rolls, args.seconds)

    return {
        "benchmark": "quality",
        "quick": bool(args.quick),
        "judged": full,
        "environment": environment(),
        "checkpoint": {"path": str(ckpt), "config": info["config"], "metadata": info["metadata"]},
        "settings": {
            **settings.to_dict(),
            "prime_window": window.to_dict(),
            "base_seed": args.seed,
            "draws": args.draws,
            "draw_seed_stride": stride,
            "batch": args.batch,
            "pieces": args.pieces,
            "split": args.split,
            "selection": (
                f"MAESTRO {args.split} pieces sorted by file name with >= {MIN_PIECE_S:g} s of "
                "music (and notes in both windows); piece i of n is eligible piece i*E//n"
            ),
            "maestro": str(maestro),
        },
        "kde": {
            "kernel": "gaussian, one bandwidth shared by both sets",
            "bandwidth": "1.06 * pooled within-set std * (mean set size)^(-1/5) (Silverman)",
            "overlap": "integral of min(f, g) on a grid of 8 points per bandwidth",
        },
        "summary": summary,
        "drift": drift_summary(pieces),
        "diagnostics": diag,
        "held_over_8s_pooled": {s: held_share(pieces, s)[0] for s in SETS},
        "bars": bar_rows,
        "overall_score": score,
        "retrieval_mrr": {
            "by_draw": retrieval,
            "mean": {s: float(np.mean(v)) for s, v in retrieval.items()},
            "chance": float(np.mean(1.0 / np.arange(1, n_primes + 1))),
        },
        "nll": nll,
        "pieces": pieces,
        "rolls": str(png) if png else None,
        "timings": {
            "generate_s": generate_s,
            "nll_s": nll_s,
            "total_s": time.perf_counter() - t_start,
        },
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "note": args.note,
    }


def main(argv: list[str] | None = None) -> int:
    from perceiver_midi.tokenizer import atomic_write_bytes

    try:
        args = parse_args(argv)
        result = run(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, (json.dumps(_clean(result), indent=1) + "\n").encode())

    print_table(result["summary"], result["diagnostics"])
    drift = result["drift"]
    print(f"\npolyphony per {drift['segment_s']:g} s of continuation (the drift):")
    for name in SETS:
        print(f"  {name:<10} " + "  ".join(f"{v:6.2f}" for v in drift[name]))
    if result["nll"]:
        print(
            f"\nvalidation NLL {result['nll']['nll']:.4f} nats/token "
            f"({result['nll']['subset']}, {result['nll']['tokens']:,} tokens)"
        )
    score, mrr = result["overall_score"], result["retrieval_mrr"]
    print(
        f"\nOVERALL SCORE (mean overlap over {len(FEATURES)} features) {score['pooled']:.3f}; "
        "draws " + " / ".join(f"{v:.3f}" for v in score["by_draw"])
    )
    n_primes = len(result["pieces"]) // max(1, result["settings"]["draws"])
    print(
        f"retrieval MRR (own prime among {n_primes}): generated "
        f"{mrr['mean']['generated']:.3f}, real {mrr['mean']['real']:.3f}, "
        f"chance {mrr['chance']:.3f}"
    )
    if result["rolls"]:
        print(f"piano rolls: {result['rolls']} (MAESTRO excerpts: do not commit)")
    print(
        f"wrote {out} in {result['timings']['total_s']:.0f} s "
        f"(generation {result['timings']['generate_s']:.0f} s)"
    )
    if not result["judged"]:
        print("bars not judged (quick or smaller-than-full run): met = null")
    for b in result["bars"]:
        verdict = {True: "MET", False: "MISSED", None: "not judged"}[b["met"]]
        draws = ""
        if len(b["by_draw"]) > 1:
            draws = "; draws " + " / ".join(_fmt(v, 3) for v in b["by_draw"])
        print(
            f"BAR {b['bar']}: {_fmt(b['value'], 4)} (target {b['target']}; "
            f"looped {_fmt(b['looped'], 4)}{draws}) {verdict}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
