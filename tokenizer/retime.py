"""Note-level re-timings of token ids, both sides of the sketch gap.

A sketch from a DAW or notation program (every onset on a grid, one loudness) encodes to ids
MAESTRO never holds, and the model keeps a figure it hears played with human timing about three
times as often as the same figure quantized (``benchmarks/continuing.py``). Two views close the gap:

* ``sketch_view``: a crop of a performance as a sketch would encode it (training crops,
  ``model.data.Sketches``);
* ``humanize``: a sketch played as a pianist might (onsets and ends moved by a few 10 ms steps,
  loudness by a bin or two), for the model's view of a prime that ``looks_quantized``.

Both read the ids' notes as the decoder pairs them (a NOTE_OFF ends the oldest sounding note of
its pitch), move them, and write them back in the encoder's order. What a crop holds keeps its
meaning: a NOTE_OFF whose NOTE_ON came before the ids stays (no later than its pitch's first
onset there), a note still sounding at the end gets no NOTE_OFF, reserved ids (SOS, sentinels)
keep their place in time. Where moving makes two notes of one pitch meet, the later onset wins: a
note whose onset lands on an earlier one's is dropped, a note sounding into the next onset of its
pitch ends there.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer.windows import shift_tokens

_Note = list[int]  # [pitch, onset, end (-1: still sounding), VELOCITY id (-1: none)]


def _read(ids: np.ndarray):
    """(notes in NOTE_ON order, loose (time, 0 reserved / 1 NOTE_OFF, id), end time)."""
    clock, vel = 0, -1
    notes: list[_Note] = []
    sounding: dict[int, list[int]] = {}  # pitch -> its open notes, oldest first
    struck: set[int] = set()
    loose: list[tuple[int, int, int]] = []
    for tok in ids.astype(np.int64).tolist():
        if C.TIME_SHIFT_FIRST_ID <= tok <= C.TIME_SHIFT_LAST_ID:
            clock += tok - C.TIME_SHIFT_FIRST_ID + 1
        elif tok >= C.VELOCITY_FIRST_ID:
            vel = tok
        elif C.NOTE_ON_FIRST_ID <= tok < C.NOTE_OFF_FIRST_ID:
            pitch = tok - C.NOTE_ON_FIRST_ID
            sounding.setdefault(pitch, []).append(len(notes))
            struck.add(pitch)
            notes.append([pitch, clock, -1, vel])
        elif C.NOTE_OFF_FIRST_ID <= tok < C.TIME_SHIFT_FIRST_ID:
            pitch = tok - C.NOTE_OFF_FIRST_ID
            if sounding.get(pitch):
                notes[sounding[pitch].pop(0)][2] = clock
            elif pitch not in struck:  # its NOTE_ON came before the ids
                loose.append((clock, 1, tok))
        else:
            loose.append((clock, 0, tok))
    notes = [n for n in notes if not 0 <= n[2] <= n[1]]  # zero-length: the decoder drops them
    return notes, loose, clock


def _write(
    ids: np.ndarray,
    notes: list[_Note],
    loose: list[tuple[int, int, int]],
    end: int,
) -> np.ndarray:
    """Moved notes (onset order, times in steps) back to ids; one pitch's meetings resolved."""
    first_on: dict[int, int] = {}
    last: dict[int, _Note] = {}
    kept = []
    for pitch, on, off, v in sorted(notes, key=lambda n: n[1]):  # stable: NOTE_ON order at ties
        prev = last.get(pitch)
        if prev is not None:
            if prev[1] == on:
                continue
            if prev[2] < 0 or prev[2] > on:
                prev[2] = on
        note = [pitch, on, off, v]
        first_on.setdefault(pitch, on)
        last[pitch] = note
        kept.append(note)
    # Events at one step in the encoder's order: NOTE_OFFs of earlier notes, then NOTE_ONs by pitch.
    events = []
    for i, (t, kind, tok) in enumerate(loose):
        if kind == 1:
            t = min(t, first_on.get(tok - C.NOTE_OFF_FIRST_ID, t))
        events.append((t, kind, 0, i, tok, -1))
    for pitch, on, off, v in kept:
        events.append((on, 2, 1, pitch, C.NOTE_ON_FIRST_ID + pitch, v))
        if off >= 0:
            events.append((off, 1, 1, on * 128 + pitch, C.NOTE_OFF_FIRST_ID + pitch, -1))
    events.sort(key=lambda e: e[:4])
    out: list[int] = []
    now, written = 0, -1
    for t, kind, _, _, tok, v in events:
        out += shift_tokens(t - now)  # events are in time order
        now = max(now, t)
        if kind == 2 and v >= 0 and v != written:
            out.append(v)
            written = v
        out.append(tok)
    if ids.size and C.TIME_SHIFT_FIRST_ID <= int(ids[-1]) <= C.TIME_SHIFT_LAST_ID:
        out += shift_tokens(max(0, end - now))
    return np.asarray(out, ids.dtype)


def _retime(
    ids, move: Callable[[list[_Note], int], None], when: Callable[[int], int]
) -> np.ndarray:
    """``move(notes, end)`` changes the notes in place (``end``: the ids' end time); ``when`` maps
    the other events' times and the end."""
    arr = np.asarray(ids)
    notes, loose, clock = _read(arr)
    move(notes, clock)
    end = when(clock)
    loose = [(min(end, when(t)), kind, tok) for t, kind, tok in loose]
    return _write(arr, notes, loose, end)


def _cell(t: int, grid: float) -> int:
    """The grid point nearest to step ``t`` (its index; halves round up)."""
    return int(np.floor(t / grid + 0.5))


def _step(k: int, grid: float) -> int:
    """Grid point ``k`` in 10 ms steps (a grid of 12.5 steps falls on 0, 13, 25, 38, ...)."""
    return int(np.floor(k * grid + 0.5))


def sketch_view(ids, grid: float, velocity_bin: int = 0) -> np.ndarray:
    """``ids`` as a sketch encodes: every onset on a grid of ``grid`` steps (10 ms each; 12.5 is a
    sixteenth at 120 bpm), every note ending on it at least one grid step after its onset, and
    with ``velocity_bin`` in 1..32 one loudness throughout (0 keeps each note's). On a whole piece
    this equals encoding its notes snapped so. Same dtype as the input."""
    if not grid >= 1:
        raise ValueError(f"grid must be >= 1 step, got {grid}")
    if not 0 <= velocity_bin <= C.NUM_VELOCITY_BINS:
        raise ValueError(f"velocity_bin must be in 0..{C.NUM_VELOCITY_BINS}, got {velocity_bin}")
    fixed = C.VELOCITY_FIRST_ID + velocity_bin - 1 if velocity_bin else None

    def snap(notes, _end):
        for n in notes:
            on = _cell(n[1], grid)
            n[1] = _step(on, grid)
            if n[2] >= 0:
                n[2] = _step(max(_cell(n[2], grid), on + 1), grid)
            if fixed is not None:
                n[3] = fixed

    return _retime(ids, snap, lambda t: _step(_cell(t, grid), grid))


HUMAN_TIMING_STEPS = 2  # humanize: onsets and ends move by up to this many 10 ms steps
HUMAN_VELOCITY_BINS = 2  # ... and each note's loudness by up to this many bins
SKETCH_MIN_NOTES = 16  # looks_quantized: fewer notes than this say nothing
SKETCH_LOUDNESS = 0.9  # ... this share of the notes in their two commonest velocity bins, and
SKETCH_ON_GRID = 0.85  # ... this share of the onset gaps within a step of one grid's: a sketch
SKETCH_GRIDS = np.arange(8.0, 60.25, 0.25)  # ... the grids tried, in steps (80-600 ms)


def looks_quantized(ids) -> bool:
    """Whether ``ids`` look like a sketch rather than a performance: at least
    ``SKETCH_MIN_NOTES`` notes, at most two loudness levels (``SKETCH_LOUDNESS``), and the gaps
    between their onsets whole numbers of one grid's steps (``SKETCH_ON_GRID``, ``SKETCH_GRIDS``).
    Both: a prime played on a grid with a pianist's loudness (the README's example) is continued
    better as it is (``benchmarks/continuing.py --example``). No MAESTRO validation or test window
    tried looks quantized (``--maestro-windows``)."""
    notes, _, _ = _read(np.asarray(ids))
    if len(notes) < SKETCH_MIN_NOTES:
        return False
    vels = np.array([n[3] for n in notes])
    counts = np.sort(np.unique(vels, return_counts=True)[1])[::-1]
    if counts[:2].sum() < SKETCH_LOUDNESS * len(notes):
        return False
    onsets = np.unique(np.array([n[1] for n in notes], np.float64))
    ioi = np.diff(onsets)  # between successive onsets (a chord's notes are one onset)
    if ioi.size < SKETCH_MIN_NOTES // 2:
        return False
    # Each gap a whole number (>= 1) of grid steps, to within a step: held locally, so a grid
    # a little off the true one (a tempo between the grids tried) still fits.
    units = np.floor(ioi[None, :] / SKETCH_GRIDS[:, None] + 0.5)
    off = np.abs(ioi[None, :] - units * SKETCH_GRIDS[:, None])
    return bool(np.max(np.mean((units >= 1) & (off <= 1), axis=1)) >= SKETCH_ON_GRID)


def humanize(
    ids,
    rng: np.random.Generator,
    timing: int = HUMAN_TIMING_STEPS,
    loudness: int = HUMAN_VELOCITY_BINS,
) -> np.ndarray:
    """``ids`` played as a pianist might: every onset and end moved by up to ``timing`` steps and
    every note's loudness by up to ``loudness`` bins (uniform, from ``rng``), inside the ids' own
    span, so the notes sounding at the end and the end's time stay as they were."""

    def move(notes, clock):
        lo, hi = C.VELOCITY_FIRST_ID, C.VELOCITY_FIRST_ID + C.NUM_VELOCITY_BINS - 1
        for n in notes:
            last_on = n[2] - 1 if n[2] >= 0 else clock
            n[1] = int(np.clip(n[1] + rng.integers(-timing, timing + 1), 0, last_on))
            if n[2] >= 0:
                n[2] = int(np.clip(n[2] + rng.integers(-timing, timing + 1), n[1] + 1, clock))
            if n[3] >= 0:
                n[3] = int(np.clip(n[3] + rng.integers(-loudness, loudness + 1), lo, hi))

    return _retime(ids, move, lambda t: t)
