"""MIDI -> token ids, exactly as Magenta's MAESTRO pipeline (note-seq) does it.

    read (tokenizer.midi) -> drop drums -> apply_sustain_control_changes
    -> quantize_note_sequence_absolute(100 steps/s) -> Performance(32 velocity bins, max shift 100)
    -> PerformanceOneHotEncoding index + 3

The two loops that note-seq runs in Python (sustain, event emission) are compiled with numba.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenizer import constants as C
from tokenizer._jit import njit
from tokenizer.midi import MidiError, NoteTable, _source_name, read_midi

_EV_SUS_ON, _EV_SUS_OFF, _EV_NOTE_ON, _EV_NOTE_OFF = 0, 1, 2, 3  # note-seq's sort priorities


@njit
def _sustain_loop(ev_time, ev_type, ev_ref, start, end, pitch, instrument, cc_instrument, n_inst):
    """``note_seq.sequences_lib.apply_sustain_control_changes`` over pre-sorted events.

    ``end`` is updated in place; returns a mask of notes that survive (note-seq deletes a note
    that a same-pitch note restarted at its own start time under the pedal).
    """
    n = start.size
    keep = np.ones(n, np.bool_)
    sus = np.zeros(n_inst, np.bool_)
    active = np.empty(n, np.int64)
    na = 0
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
            w = 0
            for j in range(na):
                m = active[j]
                if instrument[m] == inst and end[m] < time:
                    end[m] = time  # extended by the pedal until now
                else:
                    active[w] = m
                    w += 1
            na = w
        elif typ == _EV_NOTE_ON:
            inst = instrument[ref]
            if sus[inst]:
                w = 0
                for j in range(na):
                    m = active[j]
                    if instrument[m] == inst and pitch[m] == pitch[ref]:
                        end[m] = time
                        if start[m] == end[m]:
                            keep[m] = False
                    else:
                        active[w] = m
                        w += 1
                na = w
            active[na] = ref
            na += 1
        else:  # note off
            if not sus[instrument[ref]]:
                for j in range(na):
                    if active[j] == ref:
                        for i in range(j, na - 1):
                            active[i] = active[i + 1]
                        na -= 1
                        break
    for j in range(na):  # notes still held by the pedal end with the last event
        end[active[j]] = time
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


def apply_sustain(table: NoteTable) -> NoteTable:
    """Drop drum notes and extend notes under the sustain pedal as note-seq does."""
    melodic = ~table.is_drum
    start = table.start[melodic]
    end = table.end[melodic].copy()
    pitch, velocity = table.pitch[melodic], table.velocity[melodic]
    instrument = table.instrument[melodic]
    n = start.size
    ncc = table.cc_time.size
    # note-seq's event list: note-ons, note-offs, then sustain CCs; sorted by (time, type), stable.
    ev_time = np.concatenate([start, end, table.cc_time])
    cc_type = np.where(table.cc_value >= C.SUSTAIN_THRESHOLD, _EV_SUS_ON, _EV_SUS_OFF)
    ev_type = np.concatenate([np.full(n, _EV_NOTE_ON), np.full(n, _EV_NOTE_OFF), cc_type]).astype(
        np.int8
    )
    ev_ref = np.concatenate([np.arange(n), np.arange(n), np.arange(ncc)])
    order = np.lexsort((np.arange(ev_time.size), ev_type, ev_time))
    n_inst = int(max(instrument.max(initial=-1), table.cc_instrument.max(initial=-1))) + 1
    keep = _sustain_loop(
        ev_time[order],
        ev_type[order],
        ev_ref[order],
        start,
        end,
        pitch,
        instrument,
        table.cc_instrument,
        n_inst,
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
    table = apply_sustain(read_midi(source, name=label))
    ids = ids_from_table(table, name=label)
    if add_sos:
        ids = np.concatenate([[C.SOS_ID], ids]).astype(np.int32)
    if add_eos:
        ids = np.concatenate([ids, [C.EOS_ID]]).astype(np.int32)
    return ids
