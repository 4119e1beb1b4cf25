"""MIDI -> token ids, exactly as Magenta's MAESTRO pipeline (note-seq) does it.

    read (tokenizer.midi) -> drop drums -> apply_sustain_control_changes
    -> quantize_note_sequence_absolute(100 steps/s) -> Performance(32 velocity bins, max shift 100)
    -> PerformanceOneHotEncoding index + 3

The two loops that note-seq runs in Python (sustain, event emission) are compiled with numba.
Every stage is linear in its input or a sort (note-seq's sustain pass is quadratic), and the
note, event and token limits are checked before any sort, so that hostile files (GitHub issue 11)
are accepted or refused in bounded time and memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer._jit import njit
from perceiver_midi.tokenizer.midi import MidiError, NoteTable, _source_name, read_midi

_EV_SUS_ON, _EV_SUS_OFF, _EV_NOTE_ON, _EV_NOTE_OFF = 0, 1, 2, 3  # note-seq's sort priorities


@njit
def _note_keys(inst, pitch, n_inst, n_pitch):
    """Number the (instrument, pitch) pairs of the notes 0..k-1 in linear time: bucket the
    notes by pitch (counting sort), then stamp the instruments met in each bucket."""
    n = inst.size
    first = np.zeros(n_pitch + 1, np.int64)
    for i in range(n):
        first[pitch[i] + 1] += 1
    for p in range(n_pitch):
        first[p + 1] += first[p]
    order = np.empty(n, np.int64)
    for i in range(n):
        order[first[pitch[i]]] = i
        first[pitch[i]] += 1
    stamp = np.full(n_inst, -1, np.int64)
    group = np.zeros(n_inst, np.int64)
    key = np.empty(n, np.int64)
    nk = 0
    for j in range(n):
        i = order[j]
        m = inst[i]
        if stamp[m] != pitch[i]:
            stamp[m] = pitch[i]
            group[m] = nk
            nk += 1
        key[i] = group[m]
    return key, nk


@njit
def _sustain_loop(
    ev_time, ev_type, ev_ref, start, end, instrument, key, cc_instrument, n_inst, n_key
):
    """``note_seq.sequences_lib.apply_sustain_control_changes`` over pre-sorted events.

    ``end`` is updated in place; returns a mask of notes that survive (note-seq deletes a note
    that a same-pitch note restarted at its own start time under the pedal).

    note-seq keeps one list of sounding notes per instrument and scans all of it at every pedal
    release and every note-on under the pedal, and searches it at every note-off: quadratic.
    The same decisions in linear time: a note is sounding (``state`` 1), or sounding after its
    note-off, held by the pedal (``state`` 2), or not (0); a pedal release ends exactly the held
    notes of its instrument (a sounding note whose note-off is still to come ends later: the
    events are sorted by time), so each instrument keeps a list of its held notes; a note-on
    under the pedal ends the sounding notes of its (instrument, pitch), so each such key keeps a
    list of its notes. Lists are singly linked through note indices and emptied when scanned;
    notes that stopped sounding meanwhile are skipped there, so each note is visited a bounded
    number of times.
    """
    n = start.size
    keep = np.ones(n, np.bool_)
    sus = np.zeros(n_inst, np.bool_)
    state = np.zeros(n, np.int8)
    off_seen = np.zeros(n, np.bool_)
    key_head = np.full(n_key, -1, np.int64)
    key_next = np.full(n, -1, np.int64)
    held_head = np.full(n_inst, -1, np.int64)
    held_next = np.full(n, -1, np.int64)
    time = 0.0
    for k in range(ev_time.size):
        time = ev_time[k]
        typ = ev_type[k]
        ref = ev_ref[k]
        if typ == _EV_SUS_ON:
            sus[cc_instrument[ref]] = True
        elif typ == _EV_SUS_OFF:
            inst = cc_instrument[ref]
            sus[inst] = False
            if time != time:
                continue  # NaN: note-seq's ``end_time < time`` holds for no note
            node = held_head[inst]
            held_head[inst] = -1
            while node != -1:
                following = held_next[node]
                if state[node] == 2:
                    if end[node] < time:
                        end[node] = time  # extended by the pedal until now
                        state[node] = 0
                    else:  # cannot happen with sorted events; kept for note-seq's exact rule
                        held_next[node] = held_head[inst]
                        held_head[inst] = node
                node = following
        elif typ == _EV_NOTE_ON:
            inst = instrument[ref]
            kk = key[ref]
            if sus[inst]:
                node = key_head[kk]
                while node != -1:
                    if state[node] != 0:
                        end[node] = time
                        if start[node] == end[node]:
                            keep[node] = False
                        state[node] = 0
                    node = key_next[node]
                key_head[kk] = -1
            key_next[ref] = key_head[kk]
            key_head[kk] = ref
            if off_seen[ref]:  # its note-off came first (end before start): held at once
                state[ref] = 2
                held_next[ref] = held_head[inst]
                held_head[inst] = ref
            else:
                state[ref] = 1
        else:  # note off
            off_seen[ref] = True
            if state[ref] != 0:
                inst = instrument[ref]
                if not sus[inst]:
                    state[ref] = 0
                elif state[ref] == 1:
                    state[ref] = 2
                    held_next[ref] = held_head[inst]
                    held_head[inst] = ref
    for j in range(n):  # notes still sounding or held end with the last event
        if state[j] != 0:
            end[j] = time
    return keep


@njit
def _emit_events(ev_step, ev_note, ev_off, pitch, velocity, out):
    """``Performance._from_quantized_sequence`` + one-hot encoding + reserved offset.

    Returns the number of ids written to ``out`` or -1 if ``out`` is too small.
    """
    cur_step = 0
    cur_bin = 0
    w = 0
    cap = out.size
    for k in range(ev_step.size):
        step = ev_step[k]
        if step > cur_step:
            while step > cur_step + C.MAX_SHIFT_STEPS:
                if w >= cap:
                    return -1
                out[w] = C.TIME_SHIFT_LAST_ID
                w += 1
                cur_step += C.MAX_SHIFT_STEPS
            if w >= cap:
                return -1
            out[w] = C.TIME_SHIFT_FIRST_ID + (step - cur_step) - 1
            w += 1
            cur_step = step
        note = ev_note[k]
        if w + 2 > cap:
            return -1
        if ev_off[k]:
            out[w] = C.NOTE_OFF_FIRST_ID + pitch[note]
        else:
            vbin = (velocity[note] - C.MIN_VELOCITY) // C.VELOCITY_BIN_SIZE + 1
            if vbin != cur_bin:
                cur_bin = vbin
                out[w] = C.VELOCITY_FIRST_ID + vbin - 1
                w += 1
            out[w] = C.NOTE_ON_FIRST_ID + pitch[note]
        w += 1
    return w


def _dense_ids(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Numbers in ``a`` and ``b`` mapped to 0..k-1 (equal numbers, equal ids), and k."""
    both = np.concatenate([a, b]).astype(np.int64)
    if both.size == 0:
        return a.astype(np.int64), b.astype(np.int64), 0
    lo, hi = int(both.min()), int(both.max())
    if lo >= 0 and hi <= 2 * both.size + 1024:  # already small (always so for MIDI files)
        return both[: a.size], both[a.size :], hi + 1
    uniq, inv = np.unique(both, return_inverse=True)
    return inv[: a.size], inv[a.size :], int(uniq.size)


def apply_sustain(table: NoteTable, *, name: str = "<notes>") -> NoteTable:
    """Drop drum notes and extend notes under the sustain pedal as note-seq does.

    Raises MidiError beyond ``MAX_NOTES`` notes or ``MAX_EVENTS`` pedal events (checked before
    any sorting). Time: a stable sort of the events, then linear.
    """
    melodic = ~table.is_drum
    n = int(melodic.sum())
    if n > C.MAX_NOTES:
        raise MidiError(f"{name}: {n:,} notes, over the {C.MAX_NOTES:,} limit")
    ncc = table.cc_time.size
    if ncc > C.MAX_EVENTS:
        raise MidiError(f"{name}: {ncc:,} sustain pedal events, over the {C.MAX_EVENTS:,} limit")
    start = table.start[melodic]
    end = table.end[melodic].copy()
    pitch, velocity = table.pitch[melodic], table.velocity[melodic]
    instrument = table.instrument[melodic]
    # note-seq's event list (note-ons, note-offs, then sustain CCs) sorted by (time, type),
    # stable: laid out by type first, then one stable sort by time gives the same order.
    down = table.cc_value >= C.SUSTAIN_THRESHOLD
    cc_on, cc_off = np.flatnonzero(down), np.flatnonzero(~down)
    ev_time = np.concatenate([table.cc_time[cc_on], table.cc_time[cc_off], start, end])
    ev_type = np.repeat(
        np.array([_EV_SUS_ON, _EV_SUS_OFF, _EV_NOTE_ON, _EV_NOTE_OFF], np.int8),
        [cc_on.size, cc_off.size, n, n],
    )
    ev_ref = np.concatenate([cc_on, cc_off, np.arange(n), np.arange(n)]).astype(np.int32)
    order = np.argsort(ev_time, kind="stable")
    inst, cc_inst, n_inst = _dense_ids(instrument, table.cc_instrument)
    pitch_ids, _, n_pitch = _dense_ids(pitch, pitch[:0])
    key, n_key = _note_keys(inst, pitch_ids, n_inst, n_pitch)
    keep = _sustain_loop(
        ev_time[order],
        ev_type[order],
        ev_ref[order],
        start,
        end,
        inst,
        key,
        cc_inst,
        n_inst,
        n_key,
    )
    return NoteTable(
        start=start[keep],
        end=end[keep],
        pitch=pitch[keep],
        velocity=velocity[keep],
        instrument=instrument[keep],
        is_drum=np.zeros(int(keep.sum()), bool),
        cc_time=table.cc_time,
        cc_value=table.cc_value,
        cc_instrument=table.cc_instrument,
    )


def quantize(seconds: np.ndarray) -> np.ndarray:
    """note-seq's ``quantize_to_step`` at 100 steps/s: ``int(seconds * 100 + 0.5)``."""
    return np.floor(seconds * C.STEPS_PER_SECOND + (1 - C.QUANTIZE_CUTOFF)).astype(np.int64)


def ids_from_table(table: NoteTable, *, name: str = "<notes>") -> np.ndarray:
    """Sustain-applied notes (see :func:`apply_sustain`) -> ids. Raises MidiError if empty."""
    n = len(table)
    if n == 0:
        raise MidiError(f"{name}: contains no notes")
    if 2 * n > C.MAX_TOKENS:  # every note is a NOTE_ON and a NOTE_OFF: refuse before sorting
        raise MidiError(f"{name}: more than {C.MAX_TOKENS:,} tokens, over the limit")
    last = float(table.end.max())
    if not np.isfinite(last) or last > C.MAX_SECONDS or float(table.start.min()) < 0:
        raise MidiError(
            f"{name}: music lasts {last / 3600:.1f} h, over the {C.MAX_SECONDS / 3600:g} h limit"
            if np.isfinite(last) and last > 0
            else f"{name}: invalid note times"
        )
    q_start = quantize(table.start)
    q_end = quantize(table.end)
    q_end = np.where(q_end == q_start, q_end + 1, q_end)
    # Performance: notes sorted by (unquantized start, pitch), stable; then events by
    # (step, note index, is_offset).
    note_order = np.lexsort((np.arange(n), table.pitch, table.start))
    steps = np.concatenate([q_start[note_order], q_end[note_order]])
    idx = np.concatenate([np.arange(n), np.arange(n)])
    is_off = np.concatenate([np.zeros(n, bool), np.ones(n, bool)])
    ev = np.lexsort((is_off, idx, steps))
    # Upper bound on ids: per note a velocity, an on, an off; plus the time shifts.
    cap = 3 * n + 2 * n + int(q_end.max()) // C.MAX_SHIFT_STEPS + 1
    if cap > 4 * C.MAX_TOKENS:
        cap = 4 * C.MAX_TOKENS
    out = np.empty(cap, np.int32)
    w = _emit_events(
        steps[ev], idx[ev], is_off[ev], table.pitch[note_order], table.velocity[note_order], out
    )
    if w < 0 or w > C.MAX_TOKENS:
        raise MidiError(f"{name}: more than {C.MAX_TOKENS:,} tokens, over the limit")
    return out[:w].copy()


def encode(
    source: Any, *, add_sos: bool = False, add_eos: bool = False, name: str | None = None
) -> np.ndarray:
    """MIDI path / bytes / PrettyMIDI / NoteSequence -> int32 token ids (PAD=0, EOS=1, SOS=2).

    Identical to note-seq's MAESTRO encoding + 3. Raises :class:`MidiError` with a one-line
    message for unreadable input, no notes, or input beyond the documented limits.
    """
    label = _source_name(source, name)
    table = apply_sustain(read_midi(source, name=label), name=label)
    ids = ids_from_table(table, name=label)
    if add_sos:
        ids = np.concatenate([[C.SOS_ID], ids]).astype(np.int32)
    if add_eos:
        ids = np.concatenate([ids, [C.EOS_ID]]).astype(np.int32)
    return ids
