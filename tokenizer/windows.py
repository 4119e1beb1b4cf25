"""Music time of token runs, and cutting a prime to a window on event boundaries.

A cut keeps the tokens whose events happen inside the window, so a note that starts inside and
ends after the window is left open (the model may close it), and:

* leading TIME_SHIFTs are dropped (the window starts at its first event),
* the velocity in force is re-stated (a VELOCITY token) before the first NOTE_ON if the cut
  removed the VELOCITY that set it,
* for a ``start..end`` range, silence up to ``end`` is kept as TIME_SHIFTs, so the continuation
  starts at ``end``.
"""

from __future__ import annotations

import numpy as np

from perceiver_midi.tokenizer import constants as C


def _as_ids(ids) -> np.ndarray:
    return np.asarray(ids, dtype=np.int64).reshape(-1)


def shift_steps(ids) -> np.ndarray:
    """Steps each token advances the clock by (0 for anything but TIME_SHIFT)."""
    arr = _as_ids(ids)
    is_shift = (arr >= C.TIME_SHIFT_FIRST_ID) & (arr <= C.TIME_SHIFT_LAST_ID)
    return np.where(is_shift, arr - C.TIME_SHIFT_FIRST_ID + 1, 0)


def token_steps(ids) -> np.ndarray:
    """The clock (in steps) at which each token happens, before its own shift."""
    steps = shift_steps(ids)
    return np.cumsum(steps) - steps


def music_seconds(ids) -> float:
    """Music time covered by a run of ids: the sum of its TIME_SHIFTs, in seconds."""
    return float(shift_steps(ids).sum()) / C.STEPS_PER_SECOND


def shift_tokens(steps: int) -> list[int]:
    """TIME_SHIFT ids that advance the clock by ``steps`` (longest shifts first, as note-seq)."""
    out = [C.TIME_SHIFT_LAST_ID] * (steps // C.MAX_SHIFT_STEPS)
    if steps % C.MAX_SHIFT_STEPS:
        out.append(C.TIME_SHIFT_FIRST_ID + steps % C.MAX_SHIFT_STEPS - 1)
    return out


def _velocity_before(arr: np.ndarray, i: int) -> int | None:
    """The VELOCITY id in force at position ``i`` (None if no VELOCITY before it)."""
    is_vel = arr[:i] >= C.VELOCITY_FIRST_ID
    if not is_vel.any():
        return None
    return int(arr[:i][is_vel][-1])


def _with_velocity(arr: np.ndarray, i: int, kept: np.ndarray) -> np.ndarray:
    """Prepend the velocity in force at ``i`` if ``kept`` plays a note before stating one."""
    is_on = (kept >= C.NOTE_ON_FIRST_ID) & (kept < C.NOTE_OFF_FIRST_ID)
    is_vel = kept >= C.VELOCITY_FIRST_ID
    first_on = int(np.argmax(is_on)) if is_on.any() else None
    if first_on is None or is_vel[:first_on].any():
        return kept
    vel = _velocity_before(arr, i)
    return kept if vel is None else np.concatenate([[vel], kept])


def _drop_leading_shifts(arr: np.ndarray, i: int) -> int:
    while i < arr.size and C.TIME_SHIFT_FIRST_ID <= arr[i] <= C.TIME_SHIFT_LAST_ID:
        i += 1
    return i


def cut_range(ids, start_s: float, end_s: float | None = None) -> np.ndarray:
    """Events at music time in [start_s, end_s), plus silence up to end_s; see module doc."""
    arr = _as_ids(ids)
    if start_s < 0 or (end_s is not None and end_s <= start_s):
        raise ValueError(f"invalid window {start_s:g}..{end_s} s")
    t = token_steps(arr)
    start_step = int(round(start_s * C.STEPS_PER_SECOND))
    i = _drop_leading_shifts(arr, int(np.searchsorted(t, start_step, side="left")))
    if end_s is None:
        return _with_velocity(arr, i, arr[i:]).astype(np.int32)
    end_step = int(round(end_s * C.STEPS_PER_SECOND))
    # Events strictly before end_step (a TIME_SHIFT "happens" at its start time).
    j = int(np.searchsorted(t, end_step, side="left"))
    while j > i and C.TIME_SHIFT_FIRST_ID <= arr[j - 1] <= C.TIME_SHIFT_LAST_ID:
        j -= 1  # drop trailing shifts; we re-add exact silence below
    kept = arr[i:j]
    now = int(t[j - 1]) if j > i else start_step  # kept ends on an event, not a shift
    tail = shift_tokens(max(0, end_step - now))
    out = _with_velocity(arr, i, kept)
    return np.concatenate([out, np.asarray(tail, np.int64)]).astype(np.int32)


def cut_last_seconds(ids, seconds: float) -> np.ndarray:
    """The last ``seconds`` of music (events only; see module doc)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds:g}")
    total = music_seconds(ids)
    return cut_range(ids, max(0.0, total - seconds), None)


def cut_last_tokens(ids, n: int) -> np.ndarray:
    """At most ``n`` tokens ending with the last one, starting on an event (not a shift), with the
    velocity in force re-stated if needed (the result may be shorter than ``n``)."""
    if n <= 0:
        raise ValueError(f"token count must be positive, got {n}")
    arr = _as_ids(ids)
    if arr.size <= n:
        return arr.astype(np.int32)
    i = _drop_leading_shifts(arr, arr.size - n + 1)  # leave room for a VELOCITY
    return _with_velocity(arr, i, arr[i:]).astype(np.int32)
