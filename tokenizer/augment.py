"""Training-time augmentation on token ids, as in Magenta's MAESTRO setup.

* transpose by k semitones: NOTE_ON/NOTE_OFF pitches move by k; notes that leave 0..127 are
  dropped (both their NOTE_ON and NOTE_OFF).
* time stretch by a factor s: every event's time (in 10 ms steps) becomes round(s * step), and the
  TIME_SHIFTs between events are re-made (gaps over 100 steps split as the encoder does). Events
  that land on the same step keep their order; trailing silence is kept (stretched).

On a whole piece, transposition gives exactly the ids of the transposed MIDI.

Working on ids rather than on notes keeps this cheap enough to run on every training crop.
"""

from __future__ import annotations

import numpy as np

from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer._jit import HAVE_NUMBA, njit


@njit
def _augment(ids, semitones, stretch, out):
    """Writes the augmented ids of ``ids`` into ``out``; returns how many (or -1 if too small).

    VELOCITY tokens are re-emitted the way the encoder does: just before the next kept NOTE_ON,
    and only when the bin differs from the last one written.
    """
    step = 0  # clock of the input
    new_last = 0  # clock of the output at its last event
    vel_in = -1  # VELOCITY id in force in the input
    vel_out = -1  # last VELOCITY id written
    w = 0
    cap = out.size
    for k in range(ids.size):
        tok = ids[k]
        if C.TIME_SHIFT_FIRST_ID <= tok <= C.TIME_SHIFT_LAST_ID:
            step += tok - C.TIME_SHIFT_FIRST_ID + 1
            continue
        if tok >= C.VELOCITY_FIRST_ID:
            vel_in = tok
            continue
        is_on = C.NOTE_ON_FIRST_ID <= tok < C.NOTE_OFF_FIRST_ID
        if C.NOTE_ON_FIRST_ID <= tok < C.TIME_SHIFT_FIRST_ID:
            base = C.NOTE_ON_FIRST_ID if is_on else C.NOTE_OFF_FIRST_ID
            pitch = tok - base + semitones
            if pitch < C.MIN_PITCH or pitch > C.MAX_PITCH:
                continue  # the note left the piano: drop it
            tok = base + pitch
        w = _shift_to(out, w, np.int64(np.floor(step * stretch + 0.5)) - new_last)
        if w < 0:
            return -1
        new_last = np.int64(np.floor(step * stretch + 0.5))
        if w + 2 > cap:
            return -1
        if is_on and vel_in != -1 and vel_in != vel_out:
            out[w] = vel_in
            vel_out = vel_in
            w += 1
        out[w] = tok
        w += 1
    if ids.size and C.TIME_SHIFT_FIRST_ID <= ids[ids.size - 1] <= C.TIME_SHIFT_LAST_ID:
        w = _shift_to(out, w, np.int64(np.floor(step * stretch + 0.5)) - new_last)
    return w


@njit
def _shift_to(out, w, gap):
    """Appends TIME_SHIFTs covering ``gap`` steps (longest first); returns the new length or -1."""
    while gap > 0:
        if w >= out.size:
            return -1
        s = min(gap, C.MAX_SHIFT_STEPS)
        out[w] = C.TIME_SHIFT_FIRST_ID + s - 1
        w += 1
        gap -= s
    return w


def _augment_numpy(ids: np.ndarray, semitones: int, stretch: float) -> np.ndarray:
    """``_augment`` vectorised with numpy (the path without numba); the same ids."""
    n = ids.size
    is_shift = (ids >= C.TIME_SHIFT_FIRST_ID) & (ids <= C.TIME_SHIFT_LAST_ID)
    clock = np.cumsum(np.where(is_shift, ids - C.TIME_SHIFT_FIRST_ID + 1, 0))
    is_vel = ids >= C.VELOCITY_FIRST_ID
    is_note = (ids >= C.NOTE_ON_FIRST_ID) & (ids < C.TIME_SHIFT_FIRST_ID)
    is_on = (ids >= C.NOTE_ON_FIRST_ID) & (ids < C.NOTE_OFF_FIRST_ID)
    base = np.where(is_on, C.NOTE_ON_FIRST_ID, C.NOTE_OFF_FIRST_ID)
    pitch = ids - base + semitones
    in_range = (pitch >= C.MIN_PITCH) & (pitch <= C.MAX_PITCH)
    kept = ~is_shift & ~is_vel & (~is_note | in_range)  # notes on the piano and reserved ids
    last_vel = np.maximum.accumulate(np.where(is_vel, np.arange(n), -1))
    vel_in = np.where(last_vel >= 0, ids[np.maximum(last_vel, 0)], -1)
    ev = np.flatnonzero(kept)
    tok = np.where(is_note, base + pitch, ids)[ev]
    when = np.floor(clock[ev] * stretch + 0.5).astype(np.int64)
    gap = np.diff(when, prepend=0)
    # A VELOCITY goes before a kept NOTE_ON when the bin in force differs from the last written.
    on_ev = is_on[ev] & (vel_in[ev] != -1)
    v = vel_in[ev][on_ev]
    emit_on = np.ones(v.size, bool)
    emit_on[1:] = v[1:] != v[:-1]
    emit = np.zeros(ev.size, bool)
    emit[np.flatnonzero(on_ev)[emit_on]] = True
    tail = 0
    if n and is_shift[-1]:
        tail = int(np.floor(clock[-1] * stretch + 0.5)) - (int(when[-1]) if ev.size else 0)
    gaps = np.append(gap, max(tail, 0))  # the trailing silence as a last, token-less event
    n_shift = (gaps + C.MAX_SHIFT_STEPS - 1) // C.MAX_SHIFT_STEPS
    length = n_shift + np.append(emit, False) + np.append(np.ones(ev.size, np.int64), 0)
    start = np.cumsum(length) - length
    out = np.empty(int(length.sum()), np.int64)
    owner = np.repeat(np.arange(gaps.size), n_shift)  # shifts, longest first
    j = np.arange(owner.size) - np.repeat(np.cumsum(n_shift) - n_shift, n_shift)
    steps = np.minimum(gaps[owner] - C.MAX_SHIFT_STEPS * j, C.MAX_SHIFT_STEPS)
    out[start[owner] + j] = C.TIME_SHIFT_FIRST_ID - 1 + steps
    first = start[:-1] + n_shift[:-1]
    out[first[emit]] = vel_in[ev][emit]
    out[first + emit] = tok
    return out


def augment(ids, semitones: int = 0, stretch: float = 1.0) -> np.ndarray:
    """Transposed and time-stretched ids (same dtype as the input)."""
    arr = np.asarray(ids)
    if semitones == 0 and stretch == 1.0:
        return arr.copy()
    src = arr.astype(np.int64)
    if not HAVE_NUMBA:
        return _augment_numpy(src, int(semitones), float(stretch)).astype(arr.dtype)
    out = np.empty(int(src.size * max(1.0, stretch) * 2) + 16, np.int64)
    n = _augment(src, int(semitones), float(stretch), out)
    if n < 0:  # cannot happen with the bound above; kept as a guard
        raise RuntimeError("augment: output buffer too small")
    return out[:n].astype(arr.dtype)
