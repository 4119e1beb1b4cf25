"""Music metrics of the benchmarks: pure functions on note arrays and token ids.

A note array (``note_array``, ``notes_of``) has one row per note: pitch, velocity, start s, end s.

* Like a pianist? (``benchmarks/quality.py``): ``features`` of one continuation (polyphony, note
  durations and long notes, density, pitch and velocity spread, inter-onset interval, longest
  silence), the drift (``polyphony_by_segment``), the NOTE_ON/NOTE_OFF bookkeeping of a token
  stream (``token_diagnostics``), and across pieces: means, ratios to the real set and KDE
  overlaps (``summarise``), the overall score, the bars.
* Continuing *this* music? (``benchmarks/continuing.py``): ``melody(notes)``, the pitches in onset
  order (a chord read from its lowest note up); ``interval_ngrams(notes, n)``, every run of n
  successive melodic intervals (semitones), so a figure is the same n-gram in any key or on any
  chord; ``reuse(prime, cont, n)``, the share of the continuation's interval n-grams that occur
  in the prime (the figure or motif carried forward; "figure kept" is ``reuse(prime, cont, 4)``),
  ``rhythm_reuse`` the same for n-grams of inter-onset-interval ratios (rounded to the nearest of
  a few simple ratios); ``self_repetition(cont, n)``, the share of the continuation's interval
  n-grams seen earlier in it (loops score high, aimless notes score 0); ``pitch_variety(cont)``,
  distinct pitches and pitch-class entropy (bits); ``key_fit``; and ``retrieval_mrr``, how often
  a continuation is nearest its own prime.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from perceiver_midi.tokenizer import constants as C

POLYPHONY_STEP_S = 0.05
DRIFT_SEGMENT_S = 4.0  # polyphony per 4 s of continuation: the drift
HELD_LONG_S = 4.0
HELD_VERY_LONG_S = 8.0

KDE_POINTS_PER_BANDWIDTH = 8
KDE_MAX_POINTS = 200_000

BAR_RATIO_LOW, BAR_RATIO_HIGH = 0.7, 1.3
BAR_HELD_FACTOR = 2.0

NGRAM = 4
CHORD_S = 0.04  # onsets within this of a chord's first onset join it (read lowest note up)
IOI_RATIOS = np.array([1 / 4, 1 / 3, 1 / 2, 2 / 3, 1.0, 3 / 2, 2.0, 3.0, 4.0])

CONTINUING_FEATURES = (
    "prime_reuse",
    "rhythm_reuse",
    "self_repetition",
    "two_pitch_run",
    "distinct_pitches",
    "pitch_class_entropy",
    "key_fit",
)

SETS = ("real", "generated", "looped")
FEATURES = (
    "polyphony",
    "duration_median_s",
    "duration_p90_s",
    "held_over_4s_share",
    "held_over_8s_share",
    "density_notes_per_s",
    "pitch_range",
    "pitch_std",
    "velocity_mean",
    "velocity_std",
    "ioi_median_s",
    "longest_silence_s",
    *CONTINUING_FEATURES,  # does it continue *this* prime (benchmarks/continuing.py)
)
DIAGNOSTICS = (
    "tokens",
    "noop_off_share",
    "unclosed_on_share",
    "carried_unclosed",
)


# ----------------------------------------------------------------------------------------------
# Notes and features (a note array has one row per note: pitch, velocity, start s, end s)
# ----------------------------------------------------------------------------------------------


def note_array(notes) -> np.ndarray:
    """``tokenizer.Note`` list -> float array [n, 4]: pitch, velocity, start, end (seconds)."""
    rows = [(n.pitch, n.velocity, n.start, n.end) for n in notes]
    return np.asarray(rows, np.float64).reshape(-1, 4)


def notes_of(ids) -> np.ndarray:
    from perceiver_midi.tokenizer import decode_notes

    return note_array(decode_notes(ids))


def mean_polyphony(notes: np.ndarray, seconds: float) -> float:
    """Mean number of sounding notes at the midpoints of 50 ms steps over [0, seconds)."""
    steps = max(1, int(round(seconds / POLYPHONY_STEP_S)))
    t = (np.arange(steps) + 0.5) * (seconds / steps)
    start, end = notes[:, 2], notes[:, 3]
    sounding = (start[None, :] <= t[:, None]) & (end[None, :] > t[:, None])
    return float(sounding.sum(axis=1).mean())


def polyphony_by_segment(notes: np.ndarray, seconds: float, segment: float) -> list[float]:
    """Mean polyphony (as ``mean_polyphony``) in each ``segment``-second part of [0, seconds):
    how the texture evolves; a model that stops ending notes rises segment after segment."""
    n = max(1, int(round(seconds / segment)))
    edges = np.linspace(0.0, seconds, n + 1)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        shifted = notes.copy()
        shifted[:, 2:4] -= a
        out.append(mean_polyphony(shifted, b - a))
    return out


def longest_silence(notes: np.ndarray, seconds: float) -> float:
    """Longest stretch of [0, seconds] with no note sounding (leading and trailing included)."""
    if notes.size == 0:
        return float(seconds)
    order = np.argsort(notes[:, 2], kind="stable")
    longest, covered = 0.0, 0.0  # covered: sounding from 0 (or the first note) up to here
    for start, end in notes[order, 2:4]:
        longest = max(longest, min(start, seconds) - covered)
        covered = max(covered, end)
    return float(max(longest, seconds - min(covered, seconds)))


def carried_notes(prime, ids, seconds: float) -> np.ndarray:
    """Notes of the prime still sounding at the split, as ``prime + ids`` decodes them, on the
    continuation's clock (start 0, end clipped to ``seconds``)."""
    from perceiver_midi.tokenizer import music_seconds

    split = music_seconds(prime)
    both = notes_of(np.concatenate([np.asarray(prime), np.asarray(ids)]).astype(np.int32))
    eps = 0.5 / C.STEPS_PER_SECOND  # times are whole 10 ms steps
    carried = both[(both[:, 2] < split - eps) & (both[:, 3] > split + eps)].copy()
    carried[:, 2] = 0.0
    carried[:, 3] = np.minimum(carried[:, 3] - split, seconds)
    return carried


def features(
    notes: np.ndarray, seconds: float, carried: np.ndarray | None = None
) -> dict[str, float]:
    """The scalar features of one continuation (NaN where undefined, e.g. no notes).

    ``carried``: notes of the prime still sounding after the split; they count only for the
    longest silence (a held chord is not silence), every other feature is of ``notes`` alone.
    """
    pitch, velocity, start, end = notes.T
    durations = end - start
    n = len(notes)
    onsets = np.unique(start)

    def stat(fn, values, at_least=1):
        return float(fn(values)) if values.size >= at_least else math.nan

    return {
        "polyphony": mean_polyphony(notes, seconds),
        "duration_median_s": stat(np.median, durations),
        "duration_p90_s": stat(lambda d: np.percentile(d, 90), durations),
        "held_over_4s_share": stat(lambda d: np.mean(d > HELD_LONG_S), durations),
        "held_over_8s_share": stat(lambda d: np.mean(d > HELD_VERY_LONG_S), durations),
        "density_notes_per_s": n / seconds,
        "pitch_range": stat(lambda p: p.max() - p.min(), pitch),
        "pitch_std": stat(np.std, pitch),
        "velocity_mean": stat(np.mean, velocity),
        "velocity_std": stat(np.std, velocity),
        "ioi_median_s": stat(lambda o: np.median(np.diff(o)), onsets, at_least=2),
        "longest_silence_s": longest_silence(
            notes if carried is None else np.concatenate([notes, carried]), seconds
        ),
        "notes": n,
        "notes_held_over_8s": int(np.sum(durations > HELD_VERY_LONG_S)),
    }


def looped_notes(prime_notes: np.ndarray, prime_seconds: float, seconds: float) -> np.ndarray:
    """The prime replayed from time 0, repeated until ``seconds`` are filled, cut there."""
    if prime_seconds <= 0 or prime_notes.size == 0:
        return np.zeros((0, 4))
    repeats = math.ceil(seconds / prime_seconds)
    tiles = []
    for k in range(repeats):
        tile = prime_notes.copy()
        tile[:, 2:4] += k * prime_seconds
        tiles.append(tile)
    notes = np.concatenate(tiles)
    notes = notes[notes[:, 2] < seconds]
    notes[:, 3] = np.minimum(notes[:, 3], seconds)
    return notes


def token_diagnostics(prime, ids) -> dict[str, float]:
    """NOTE_ON/NOTE_OFF bookkeeping of ``ids`` read after ``prime`` (pairing FIFO per pitch, as
    the decoder does): no-op NOTE_OFFs (nothing of that pitch sounding), NOTE_ONs of ``ids`` still
    open at the end, and notes open at the split (from the prime) still open at the end."""
    open_notes = collections.defaultdict(collections.deque)  # pitch -> "prime"/"new", oldest first
    for tok in np.asarray(prime, np.int64).tolist():
        if C.NOTE_ON_FIRST_ID <= tok < C.NOTE_OFF_FIRST_ID:
            open_notes[tok - C.NOTE_ON_FIRST_ID].append("prime")
        elif C.NOTE_OFF_FIRST_ID <= tok < C.TIME_SHIFT_FIRST_ID:
            pending = open_notes[tok - C.NOTE_OFF_FIRST_ID]
            if pending:
                pending.popleft()
    carried = sum(len(q) for q in open_notes.values())
    ons = offs = noop_offs = 0
    ids = np.asarray(ids, np.int64)
    for tok in ids.tolist():
        if C.NOTE_ON_FIRST_ID <= tok < C.NOTE_OFF_FIRST_ID:
            ons += 1
            open_notes[tok - C.NOTE_ON_FIRST_ID].append("new")
        elif C.NOTE_OFF_FIRST_ID <= tok < C.TIME_SHIFT_FIRST_ID:
            offs += 1
            pending = open_notes[tok - C.NOTE_OFF_FIRST_ID]
            if pending:
                pending.popleft()
            else:
                noop_offs += 1
    left = collections.Counter(label for q in open_notes.values() for label in q)
    return {
        "tokens": int(ids.size),
        "note_ons": ons,
        "note_offs": offs,
        "noop_offs": noop_offs,
        "noop_off_share": noop_offs / offs if offs else math.nan,
        "unclosed_ons": left["new"],
        "unclosed_on_share": left["new"] / ons if ons else math.nan,
        "carried_open": carried,
        "carried_unclosed": left["prime"],
    }


# ----------------------------------------------------------------------------------------------
# Continuing this prime (the figure, the rhythm, the key)
# ----------------------------------------------------------------------------------------------


def chord_groups(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, group): notes sorted by onset, and for each the index of its chord: a chord
    starts at an onset more than ``CHORD_S`` after the previous chord's first onset."""
    order = np.argsort(notes[:, 2], kind="stable")
    group = np.zeros(len(order), np.int64)
    first = -np.inf
    for i, t in enumerate(notes[order, 2]):
        if t - first > CHORD_S:
            first = t
            group[i] = group[i - 1] + 1 if i else 0
        else:
            group[i] = group[i - 1]
    return order, group


def melody(notes: np.ndarray) -> np.ndarray:
    """Pitches in onset order; the notes of a chord are read from the lowest up."""
    if len(notes) == 0:
        return np.zeros(0, np.int64)
    order, group = chord_groups(notes)
    pitch = notes[order, 0]
    return pitch[np.lexsort((pitch, group))].astype(np.int64)


def interval_ngrams(notes: np.ndarray, n: int = NGRAM) -> list[tuple]:
    steps = np.diff(melody(notes))
    return [tuple(steps[i : i + n].tolist()) for i in range(len(steps) - n + 1)]


def rhythm_ngrams(notes: np.ndarray, n: int = NGRAM) -> list[tuple]:
    """n-grams of successive inter-onset-interval ratios (chords count once), each ratio snapped
    to the nearest of ``IOI_RATIOS`` in log terms."""
    if len(notes) == 0:
        return []
    order, group = chord_groups(notes)
    starts = notes[order, 2]
    onsets = starts[np.r_[True, group[1:] != group[:-1]]]
    ioi = np.diff(onsets)
    if ioi.size < 2:
        return []
    ratio = ioi[1:] / np.maximum(ioi[:-1], 1e-3)
    snapped = np.argmin(np.abs(np.log(ratio)[:, None] - np.log(IOI_RATIOS)[None]), axis=1)
    return [tuple(snapped[i : i + n].tolist()) for i in range(len(snapped) - n + 1)]


def _share_in(grams: list[tuple], pool: set) -> float:
    return float(np.mean([g in pool for g in grams])) if grams else math.nan


def reuse(prime: np.ndarray, cont: np.ndarray, n: int = NGRAM) -> float:
    """Share of the continuation's interval n-grams that occur in the prime (NaN: none)."""
    return _share_in(interval_ngrams(cont, n), set(interval_ngrams(prime, n)))


def rhythm_reuse(prime: np.ndarray, cont: np.ndarray, n: int = NGRAM) -> float:
    return _share_in(rhythm_ngrams(cont, n), set(rhythm_ngrams(prime, n)))


def self_repetition(cont: np.ndarray, n: int = NGRAM) -> float:
    """Share of the continuation's interval n-grams already heard earlier in it."""
    grams = interval_ngrams(cont, n)
    seen, hits = set(), []
    for g in grams:
        hits.append(g in seen)
        seen.add(g)
    return float(np.mean(hits)) if hits else math.nan


def two_pitch_run(cont: np.ndarray) -> float:
    """The longest run of consecutive notes (onset order; a chord read lowest note up) on at most
    two pitches: a sampler stuck on one repeated note or a two-note loop runs for the whole
    continuation, which self-repetition and distinct pitches barely show; real playing's runs
    are trills, repeated notes and octaves (0: no notes)."""
    if len(cont) == 0:
        return 0.0
    order = np.lexsort((cont[:, 0], cont[:, 2]))
    pitches = cont[order, 0].astype(np.int64)
    counts: collections.Counter = collections.Counter()
    best = first = 0
    for last, p in enumerate(pitches):
        counts[p] += 1
        while len(counts) > 2:
            counts[pitches[first]] -= 1
            if not counts[pitches[first]]:
                del counts[pitches[first]]
            first += 1
        best = max(best, last - first + 1)
    return float(best)


def pitch_variety(cont: np.ndarray) -> dict[str, float]:
    if len(cont) == 0:
        return {"distinct_pitches": 0.0, "pitch_class_entropy": math.nan}
    pitches = cont[:, 0].astype(np.int64)
    counts = np.bincount(pitches % 12, minlength=12).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return {
        "distinct_pitches": float(np.unique(pitches).size),
        "pitch_class_entropy": float(-(p * np.log2(p)).sum()),
    }


def pitch_class_profile(notes: np.ndarray) -> np.ndarray:
    """Share of notes on each pitch class (12 zeros for no notes)."""
    counts = np.bincount(notes[:, 0].astype(np.int64) % 12, minlength=12).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def key_fit(prime: np.ndarray, cont: np.ndarray) -> float:
    """Correlation of the continuation's pitch-class profile with the prime's (1: same key
    weighting; NaN when either has no notes or no spread)."""
    a, b = pitch_class_profile(prime), pitch_class_profile(cont)
    if a.std() == 0 or b.std() == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def continuing_features(prime: np.ndarray, cont: np.ndarray) -> dict[str, float]:
    """All of the above for one (prime, continuation) pair."""
    return {
        "prime_reuse": reuse(prime, cont),
        "rhythm_reuse": rhythm_reuse(prime, cont),
        "self_repetition": self_repetition(cont),
        # log2(1 + run): on the count, a few stuck continuations among many ordinary ones
        # widen the KDE's bandwidth until the overlap hardly moves (0.91 for 6 stuck in 64).
        "two_pitch_run": math.log2(1.0 + two_pitch_run(cont)),
        **pitch_variety(cont),
        "key_fit": key_fit(prime, cont),
    }


def retrieval_vector(notes: np.ndarray, seconds: float) -> np.ndarray:
    """What identifies a passage at a glance: pitch-class profile (12), register (mean pitch and
    its spread), density (log notes/s), loudness (mean velocity) and pace (log median IOI)."""
    if len(notes) == 0:
        return np.full(17, np.nan)
    onsets = np.unique(notes[:, 2])
    ioi = np.median(np.diff(onsets)) if onsets.size > 1 else seconds
    return np.concatenate(
        [
            pitch_class_profile(notes),
            [
                notes[:, 0].mean() / 12.0,
                notes[:, 0].std() / 12.0,
                math.log(len(notes) / seconds),
                notes[:, 1].mean() / 32.0,
                math.log(max(ioi, 0.01)),
            ],
        ]
    )


def retrieval_mrr(primes: list[np.ndarray], conts: list[np.ndarray]) -> float:
    """Mean reciprocal rank of each continuation's own prime among all primes, ranked by
    distance between ``retrieval_vector``s (each dimension scaled by its spread over the
    primes). 1 = every continuation is nearest its own prime; chance ~ H(n)/n."""
    p = np.stack(primes)
    c = np.stack(conts)
    scale = np.nanstd(p, axis=0)
    scale[~(scale > 0)] = 1.0
    p, c = np.nan_to_num(p / scale), np.nan_to_num(c / scale)
    d = np.linalg.norm(c[:, None, :] - p[None, :, :], axis=-1)  # [cont, prime]
    own = d[np.arange(len(c)), np.arange(len(c))]
    ranks = 1 + np.sum(d < own[:, None], axis=1)
    return float(np.mean(1.0 / ranks))


# ----------------------------------------------------------------------------------------------
# Comparing distributions
# ----------------------------------------------------------------------------------------------


def kde_bandwidth(a: np.ndarray, b: np.ndarray) -> float:
    """Silverman's rule of thumb on the pooled within-set standard deviation."""
    na, nb = a.size, b.size
    var = ((na - 1) * np.var(a, ddof=1 if na > 1 else 0)) + (
        (nb - 1) * np.var(b, ddof=1 if nb > 1 else 0)
    )
    s = math.sqrt(var / max(na + nb - 2, 1))
    return 1.06 * s * ((na + nb) / 2) ** -0.2


def kde_overlap(a, b) -> float:
    """Overlapping area of the Gaussian KDEs of two samples (NaNs dropped); 1 = same, 0 = apart."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return math.nan
    h = kde_bandwidth(a, b)
    if h == 0:  # both sets constant: the same value or not
        return 1.0 if a[0] == b[0] else 0.0
    lo = min(a.min(), b.min()) - 5 * h
    hi = max(a.max(), b.max()) + 5 * h
    points = int(np.clip((hi - lo) / h * KDE_POINTS_PER_BANDWIDTH, 512, KDE_MAX_POINTS))
    x = np.linspace(lo, hi, points)

    def density(sample):
        z = (x[None, :] - sample[:, None]) / h
        return np.exp(-0.5 * z * z).sum(axis=0) / (sample.size * h * math.sqrt(2 * math.pi))

    return float(np.clip(np.trapezoid(np.minimum(density(a), density(b)), x), 0.0, 1.0))


def summarise(pieces: list[dict]) -> dict:
    """Per feature: the mean of each set, its ratio to the real mean, its KDE overlap with real."""
    out = {}
    for name in FEATURES:
        values = {s: np.array([p[s]["features"][name] for p in pieces], np.float64) for s in SETS}
        real_mean = _nanmean(values["real"])
        row = {"real": {"mean": real_mean}}
        for s in SETS[1:]:
            mean = _nanmean(values[s])
            ratio = mean / real_mean if real_mean and math.isfinite(real_mean) else math.nan
            row[s] = {
                "mean": mean,
                "ratio": ratio,
                "overlap": kde_overlap(values[s], values["real"]),
            }
        out[name] = row
    return out


def overall_score(pieces: list[dict]) -> dict:
    """The one number that decides between checkpoints and sampler settings (declared before
    the runs it judges): the mean, over every feature in ``FEATURES`` (the pianist-likeness ones
    and the continuing ones), of the generated set's KDE overlap with the real set; pooled and
    per draw."""

    def score(rows):
        s = summarise(rows)
        return float(np.nanmean([s[name]["generated"]["overlap"] for name in FEATURES]))

    draws = by_draw(pieces)
    return {"pooled": score(pieces), "by_draw": [score(d) for d in draws]}


def drift_summary(pieces: list[dict]) -> dict:
    """Per set: mean polyphony in each 4 s segment of the continuation, over the pieces."""
    out = {"segment_s": DRIFT_SEGMENT_S}
    for s in SETS:
        rows = np.array([p[s]["polyphony_by_segment"] for p in pieces], np.float64)
        out[s] = [round(float(v), 3) for v in rows.mean(axis=0)] if rows.size else []
    return out


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def diagnostics_summary(pieces: list[dict]) -> dict:
    out = {}
    for s in ("real", "generated"):
        rows = [p[s]["tokens"] for p in pieces]
        offs = sum(r["note_offs"] for r in rows)
        ons = sum(r["note_ons"] for r in rows)
        out[s] = {
            "tokens_mean": float(np.mean([r["tokens"] for r in rows])),
            "noop_off_share": sum(r["noop_offs"] for r in rows) / offs if offs else math.nan,
            "unclosed_on_share": sum(r["unclosed_ons"] for r in rows) / ons if ons else math.nan,
            "carried_open": sum(r["carried_open"] for r in rows),
            "carried_unclosed": sum(r["carried_unclosed"] for r in rows),
        }
    stops = collections.Counter(p["generated"]["stop"] for p in pieces)
    out["generated"]["stops"] = dict(sorted(stops.items()))
    return out


def held_share(pieces: list[dict], which: str) -> tuple[float, int]:
    """Share of all notes of a set (pieces pooled) held > 8 s, and the number of notes."""
    notes = sum(p[which]["features"]["notes"] for p in pieces)
    held = sum(p[which]["features"]["notes_held_over_8s"] for p in pieces)
    return (held / notes if notes else math.nan), notes


def by_draw(pieces: list[dict]) -> list[list[dict]]:
    """The rows of each draw (rows without a ``draw`` are draw 0), in draw order."""
    draws: dict[int, list[dict]] = {}
    for p in pieces:
        draws.setdefault(p.get("draw", 0), []).append(p)
    return [draws[k] for k in sorted(draws)]


def bars(summary: dict, pieces: list[dict], judged: bool) -> list[dict]:
    """The product card's bars for the generated set (looped shown for reference), judged on
    all draws pooled; ``by_draw`` gives each draw's own value (the spread one draw has)."""
    draws = by_draw(pieces)
    draw_summaries = [summarise(d) for d in draws] if len(draws) > 1 else [summary]
    real_share, real_notes = held_share(pieces, "real")
    reference = max(real_share if math.isfinite(real_share) else 0.0, 1 / max(real_notes, 1))
    out = []
    for name, feature in (
        ("polyphony ratio", "polyphony"),
        ("density ratio", "density_notes_per_s"),
    ):
        value = summary[feature]["generated"]["ratio"]
        out.append(
            {
                "bar": name,
                "value": value,
                "looped": summary[feature]["looped"]["ratio"],
                "by_draw": [d[feature]["generated"]["ratio"] for d in draw_summaries],
                "target": f"{BAR_RATIO_LOW}-{BAR_RATIO_HIGH}",
                "met": bool(BAR_RATIO_LOW <= value <= BAR_RATIO_HIGH) if judged else None,
            }
        )
    gen_share, _ = held_share(pieces, "generated")
    out.append(
        {
            "bar": "notes held > 8 s",
            "value": gen_share,
            "looped": held_share(pieces, "looped")[0],
            "by_draw": [held_share(d, "generated")[0] for d in draws],
            "real": real_share,
            "reference": reference,
            "target": f"<= {BAR_HELD_FACTOR:g} x max(real share, 1/{real_notes} real notes)"
            f" = {BAR_HELD_FACTOR * reference:.4f}",
            "met": bool(gen_share <= BAR_HELD_FACTOR * reference) if judged else None,
        }
    )
    return out
