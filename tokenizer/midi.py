"""Reading MIDI into a note table with exactly the semantics note-seq gets through pretty_midi.

note-seq reads MIDI with ``pretty_midi`` (which parses with ``mido``). To produce ids identical to
note-seq we reproduce what those libraries do, but in compiled code (numba): a MAESTRO file takes
~1.3 ms to encode where note-seq's pipeline takes ~0.2 s (medians per file,
``benchmarks/results/tokenizer.json``):

* ``mido``: standard MIDI file chunks, running status (meta events do not set it), sysex skipped,
  data bytes must be < 128.
* ``pretty_midi``: tempo only from track 0 (a tempo at tick 0 replaces the default 120 bpm,
  repeated tempi ignored), tick -> seconds in float64 with the same operations; a note-off (or
  note-on with velocity 0) closes *every* open note of that (channel, pitch) in the track except
  those that started on the same tick, and if it closed nothing those are dropped; notes never
  closed are dropped; an instrument is (program, channel, track), created when its first note
  closes; control changes that arrive before that instrument exists are kept on a per
  (channel, track) "straggler" list that the first instrument created there adopts.
* ``note_seq.midi_io``: notes in instrument order, then in the order they closed; an instrument is a
  drum kit when its channel is 9.

Every index into the byte buffer is bounds-checked: malformed input gives an error code, which
``read_midi`` turns into a one-line :class:`MidiError`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import numpy as np

from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer._jit import njit


class MidiError(ValueError):
    """A MIDI input we cannot turn into tokens; the message is one line naming input and reason."""


@dataclasses.dataclass
class NoteTable:
    """Notes and sustain-pedal events, as note-seq's NoteSequence would hold them (unquantized).

    Arrays are parallel and in note-seq's note order. ``cc_*`` hold only CC64 (sustain) events.
    """

    start: np.ndarray  # float64 seconds
    end: np.ndarray  # float64 seconds
    pitch: np.ndarray  # int32
    velocity: np.ndarray  # int32
    instrument: np.ndarray  # int32
    is_drum: np.ndarray  # bool
    cc_time: np.ndarray  # float64 seconds
    cc_value: np.ndarray  # int32
    cc_instrument: np.ndarray  # int32

    def __len__(self) -> int:
        return int(self.pitch.size)


# Event kinds produced by the byte parser.
_NOTE_ON = 1
_NOTE_OFF = 2
_CC64 = 3
_PROGRAM = 4
_TEMPO = 5

# Error codes of the byte parser.
_OK = 0
_ERR_NOT_MIDI = 1
_ERR_TRUNCATED = 2
_ERR_SMPTE = 3
_ERR_BAD_DATA = 4
_ERR_RUNNING_STATUS = 5
_ERR_BAD_VLQ = 6
_ERR_BAD_STATUS = 7
_ERR_BAD_TEMPO = 8
_ERR_TOO_MANY_TRACKS = 9
_ERR_BAD_HEADER = 10
_ERR_TOO_MANY_EVENTS = 11

_ERROR_TEXT = {
    _ERR_NOT_MIDI: "not a MIDI file (no MThd header)",
    _ERR_TRUNCATED: "truncated MIDI file (data ends inside a chunk or event)",
    _ERR_SMPTE: "SMPTE time division is not supported",
    _ERR_BAD_DATA: "corrupt MIDI data (a data byte is >= 128)",
    _ERR_RUNNING_STATUS: "corrupt MIDI data (running status without a previous status)",
    _ERR_BAD_VLQ: "corrupt MIDI data (variable-length number longer than 4 bytes)",
    _ERR_BAD_STATUS: "corrupt MIDI data (undefined status byte)",
    _ERR_BAD_TEMPO: "corrupt MIDI data (invalid set_tempo event)",
    _ERR_TOO_MANY_TRACKS: f"too many tracks (limit {C.MAX_TRACKS})",
    _ERR_BAD_HEADER: "corrupt MIDI header (bad length or zero ticks per beat)",
    _ERR_TOO_MANY_EVENTS: f"more than {C.MAX_EVENTS:,} note, pedal, program and tempo events, "
    "over the limit",
}


@njit
def _parse_smf(d, max_tracks, max_events):
    """Parse SMF bytes into a flat list of the events that matter, in file order.

    One pass over the bytes; more than ``max_events`` kept events is an error (memory and time
    stay bounded by the limit, whatever the file size).
    Returns (err, ticks_per_beat, n_events, track, tick, kind, channel, a, b).
    """
    n = d.size
    cap = min(n // 2 + 16, max_events)  # every event takes at least two bytes
    ev_track = np.empty(cap, np.int32)
    ev_tick = np.empty(cap, np.int64)
    ev_kind = np.empty(cap, np.int8)
    ev_chan = np.empty(cap, np.int8)
    ev_a = np.empty(cap, np.int32)
    ev_b = np.empty(cap, np.int32)
    ne = 0
    if n < 4 or d[0] != 77 or d[1] != 84 or d[2] != 104 or d[3] != 100:
        return _ERR_NOT_MIDI, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
    if n < 14:
        return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
    hlen = (np.int64(d[4]) << 24) | (np.int64(d[5]) << 16) | (np.int64(d[6]) << 8) | d[7]
    if hlen < 6:
        return _ERR_BAD_HEADER, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
    if 8 + hlen > n:
        return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
    ntracks = (np.int64(d[10]) << 8) | d[11]
    division = (np.int64(d[12]) << 8) | d[13]
    if division & 0x8000:
        return _ERR_SMPTE, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
    if division == 0:
        return _ERR_BAD_HEADER, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
    if ntracks > max_tracks:
        return _ERR_TOO_MANY_TRACKS, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
    p = 8 + hlen
    track = 0
    while track < ntracks:
        if p + 8 > n:
            return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
        clen = (
            (np.int64(d[p + 4]) << 24)
            | (np.int64(d[p + 5]) << 16)
            | (np.int64(d[p + 6]) << 8)
            | d[p + 7]
        )
        start = p + 8
        end = start + clen
        if end > n:
            return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
        is_mtrk = d[p] == 77 and d[p + 1] == 84 and d[p + 2] == 114 and d[p + 3] == 107
        p = end
        if not is_mtrk:
            continue  # unknown chunk: skip it
        q = start
        tick = np.int64(0)
        last_status = 0
        while q < end:
            # Delta time (variable-length quantity, at most 4 bytes).
            delta = np.int64(0)
            nb = 0
            while True:
                if q >= end:
                    return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                byte = np.int64(d[q])
                q += 1
                nb += 1
                delta = (delta << 7) | (byte & 0x7F)
                if byte < 0x80:
                    break
                if nb == 4:
                    return _ERR_BAD_VLQ, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
            tick += delta
            if q >= end:
                return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
            status = np.int64(d[q])
            if status < 0x80:
                if last_status == 0:
                    return (
                        _ERR_RUNNING_STATUS,
                        0,
                        0,
                        ev_track,
                        ev_tick,
                        ev_kind,
                        ev_chan,
                        ev_a,
                        ev_b,
                    )
                status = last_status  # the byte is data; do not consume it
            else:
                q += 1
                if status != 0xFF:
                    last_status = status  # meta events do not set running status (mido)
            if status == 0xFF or status == 0xF0 or status == 0xF7:
                mtype = -1
                if status == 0xFF:
                    if q >= end:
                        return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                    mtype = np.int64(d[q])
                    q += 1
                length = np.int64(0)
                nb = 0
                while True:
                    if q >= end:
                        return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                    byte = np.int64(d[q])
                    q += 1
                    nb += 1
                    length = (length << 7) | (byte & 0x7F)
                    if byte < 0x80:
                        break
                    if nb == 4:
                        return _ERR_BAD_VLQ, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                if q + length > end:
                    return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                if mtype == 0x51 and track == 0:
                    if length < 3:
                        return _ERR_BAD_TEMPO, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                    tempo = (np.int64(d[q]) << 16) | (np.int64(d[q + 1]) << 8) | d[q + 2]
                    if tempo == 0:
                        return _ERR_BAD_TEMPO, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                    if ne >= cap:
                        return (
                            _ERR_TOO_MANY_EVENTS,
                            0,
                            0,
                            ev_track,
                            ev_tick,
                            ev_kind,
                            ev_chan,
                            ev_a,
                            ev_b,
                        )
                    ev_track[ne] = track
                    ev_tick[ne] = tick
                    ev_kind[ne] = _TEMPO
                    ev_chan[ne] = 0
                    ev_a[ne] = 0
                    ev_b[ne] = tempo
                    ne += 1
                q += length
            elif status >= 0xF0:
                # System common / real-time messages (mido's fixed lengths).
                if status == 0xF2:
                    ndata = 2
                elif status == 0xF1 or status == 0xF3:
                    ndata = 1
                elif status == 0xF6 or status == 0xF8 or (0xFA <= status <= 0xFC) or status == 0xFE:
                    ndata = 0
                else:
                    return _ERR_BAD_STATUS, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                if q + ndata > end:
                    return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                for i in range(ndata):
                    if d[q + i] >= 0x80:
                        return _ERR_BAD_DATA, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                q += ndata
            else:
                kind = status & 0xF0
                chan = status & 0x0F
                ndata = 1 if (kind == 0xC0 or kind == 0xD0) else 2
                if q + ndata > end:
                    return _ERR_TRUNCATED, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                a = np.int64(d[q])
                b = np.int64(d[q + 1]) if ndata == 2 else np.int64(0)
                if a >= 0x80 or b >= 0x80:
                    return _ERR_BAD_DATA, 0, 0, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b
                q += ndata
                k = 0
                if kind == 0x90:
                    k = _NOTE_ON if b > 0 else _NOTE_OFF
                elif kind == 0x80:
                    k = _NOTE_OFF
                elif kind == 0xB0:
                    if a == C.SUSTAIN_CONTROL:
                        k = _CC64
                elif kind == 0xC0:
                    k = _PROGRAM
                if k != 0:
                    if ne >= cap:
                        return (
                            _ERR_TOO_MANY_EVENTS,
                            0,
                            0,
                            ev_track,
                            ev_tick,
                            ev_kind,
                            ev_chan,
                            ev_a,
                            ev_b,
                        )
                    ev_track[ne] = track
                    ev_tick[ne] = tick
                    ev_kind[ne] = k
                    ev_chan[ne] = chan
                    ev_a[ne] = a
                    ev_b[ne] = b
                    ne += 1
        track += 1
    return _OK, division, ne, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b


@njit
def _assemble(ne, ev_track, ev_tick, ev_kind, ev_chan, ev_a, ev_b):
    """pretty_midi's ``_load_instruments`` on the parsed events.

    Linear time: open notes of a (channel, pitch) are a linked list through event indices; a
    note-off walks the list once, and the notes it keeps (those started on its own tick) are
    closed or dropped by the next note-off of the key, so every note-on is visited at most twice.
    Returns notes (start_tick, end_tick, pitch, velocity, instrument, close order), instruments
    (channel, cc-list id) in creation order, and CC64 events (tick, value, cc-list id).
    """
    # Every note comes from one note-on (and creates at most one instrument): size by counts.
    n_on = 0
    n_cc = 0
    for e in range(ne):
        if ev_kind[e] == _NOTE_ON:
            n_on += 1
        elif ev_kind[e] == _CC64:
            n_cc += 1
    note_start = np.empty(n_on, np.int64)
    note_end = np.empty(n_on, np.int64)
    note_pitch = np.empty(n_on, np.int32)
    note_vel = np.empty(n_on, np.int32)
    note_inst = np.empty(n_on, np.int32)
    nn = 0
    inst_chan = np.empty(n_on + 1, np.int32)
    inst_list = np.empty(n_on + 1, np.int32)
    ninst = 0
    cc_tick = np.empty(n_cc, np.int64)
    cc_val = np.empty(n_cc, np.int32)
    cc_list = np.empty(n_cc, np.int32)
    ncc = 0
    nlists = 0
    # Open notes per (channel, pitch): a singly linked list through event indices.
    head = np.full(16 * 128, -1, np.int64)
    tail = np.full(16 * 128, -1, np.int64)
    head_track = np.full(16 * 128, -1, np.int64)
    nxt = np.full(ne + 1, -1, np.int64)
    # Per-track state.
    cur_program = np.zeros(16, np.int32)
    inst_lookup = np.full(16 * 128, -1, np.int32)  # (channel, program) -> instrument, this track
    straggler = np.full(16, -1, np.int32)  # channel -> cc-list id, this track
    track = -1
    for e in range(ne):
        if ev_track[e] != track:
            track = ev_track[e]
            cur_program[:] = 0
            inst_lookup[:] = -1
            straggler[:] = -1
        k = ev_kind[e]
        ch = np.int64(ev_chan[e])  # int8 * 128 would overflow in the plain-Python fallback
        if k == _PROGRAM:
            cur_program[ch] = ev_a[e]
        elif k == _NOTE_ON:
            key = ch * 128 + ev_a[e]
            nxt[e] = -1
            if head_track[key] != track or head[key] == -1:
                head_track[key] = track
                head[key] = e
            else:
                nxt[tail[key]] = e
            tail[key] = e
        elif k == _NOTE_OFF:
            key = ch * 128 + ev_a[e]
            if head_track[key] != track or head[key] == -1:
                continue
            t_end = ev_tick[e]
            n_close = 0
            n_keep = 0
            keep_head = -1
            keep_tail = -1
            node = head[key]
            while node != -1:
                following = nxt[node]
                if ev_tick[node] != t_end:
                    n_close += 1
                    prog = cur_program[ch]
                    slot = ch * 128 + prog
                    inst = inst_lookup[slot]
                    if inst == -1:
                        inst = ninst
                        ninst += 1
                        inst_lookup[slot] = inst
                        inst_chan[inst] = ch
                        if straggler[ch] != -1:
                            inst_list[inst] = straggler[ch]
                        else:
                            inst_list[inst] = nlists
                            nlists += 1
                    note_start[nn] = ev_tick[node]
                    note_end[nn] = t_end
                    note_pitch[nn] = ev_a[e]
                    note_vel[nn] = ev_b[node]
                    note_inst[nn] = inst
                    nn += 1
                else:
                    n_keep += 1
                    nxt[node] = -1
                    if keep_head == -1:
                        keep_head = node
                    else:
                        nxt[keep_tail] = node
                    keep_tail = node
                node = following
            if n_close > 0 and n_keep > 0:
                head[key] = keep_head
                tail[key] = keep_tail
            else:
                head[key] = -1
                tail[key] = -1
        elif k == _CC64:
            prog = cur_program[ch]
            inst = inst_lookup[ch * 128 + prog]
            if inst != -1:
                lst = inst_list[inst]
            else:
                if straggler[ch] == -1:
                    straggler[ch] = nlists
                    nlists += 1
                lst = straggler[ch]
            cc_tick[ncc] = ev_tick[e]
            cc_val[ncc] = ev_b[e]
            cc_list[ncc] = lst
            ncc += 1
    return (
        note_start[:nn],
        note_end[:nn],
        note_pitch[:nn],
        note_vel[:nn],
        note_inst[:nn],
        inst_chan[:ninst],
        inst_list[:ninst],
        cc_tick[:ncc],
        cc_val[:ncc],
        cc_list[:ncc],
    )


@njit
def _tempo_map(tempo_ticks, tempi, ticks_per_beat):
    """pretty_midi's tick -> time map: segment start ticks, seconds per tick, start seconds."""
    n = tempo_ticks.size
    starts = np.zeros(n + 1, np.int64)
    scales = np.empty(n + 1, np.float64)
    scales[0] = 60.0 / (120.0 * ticks_per_beat)
    m = 1
    for j in range(n):
        tick = tempo_ticks[j]
        tempo = tempi[j]
        if tick == 0:
            bpm = 6e7 / tempo
            starts[0] = 0
            scales[0] = 60.0 / (bpm * ticks_per_beat)
            m = 1
        else:
            scale = 60.0 / ((6e7 / tempo) * ticks_per_beat)
            if scale != scales[m - 1]:
                starts[m] = tick
                scales[m] = scale
                m += 1
    base = np.zeros(m, np.float64)
    for j in range(1, m):
        base[j] = base[j - 1] + scales[j - 1] * (starts[j] - starts[j - 1])
    return starts[:m], scales[:m], base


def _ticks_to_seconds(ticks: np.ndarray, tempo_ticks, tempi, ticks_per_beat: int) -> np.ndarray:
    """pretty_midi's tick -> time map, evaluated only at the ticks we need (same float64 ops)."""
    starts, scales, base = _tempo_map(
        tempo_ticks.astype(np.int64), tempi.astype(np.int64), np.int64(ticks_per_beat)
    )
    return _eval_tempo_map(ticks, starts, scales, base)


@njit
def _eval_tempo_map(ticks, starts, scales, base):
    """``base[seg] + scales[seg] * (tick - starts[seg])`` per tick, without temporary arrays."""
    out = np.empty(ticks.size, np.float64)
    seg = np.searchsorted(starts, ticks, side="right") - 1
    for i in range(ticks.size):
        j = seg[i]
        out[i] = base[j] + scales[j] * (ticks[i] - starts[j])
    return out


def _adopted_ccs(cc_list: np.ndarray, inst_list: np.ndarray, name: str):
    """Indices of the CC events each instrument gets, and the instrument of each, in
    note-seq's order (instruments in creation order, then file order): linear in the output.

    pretty_midi lets every instrument created on a (channel, track) adopt the same list of CCs
    sent there before its first note, so the output can be far longer than the file: it is
    bounded by ``MAX_EVENTS`` before anything is allocated.
    """
    n_lists = int(max(cc_list.max(initial=-1), inst_list.max(initial=-1))) + 1
    counts = np.bincount(cc_list, minlength=n_lists)
    reps = counts[inst_list]
    total = int(reps.sum())
    if total > C.MAX_EVENTS:
        raise MidiError(
            f"{name}: {total:,} sustain pedal events once shared by the instruments of their "
            f"channel, over the {C.MAX_EVENTS:,} limit"
        )
    by_list = np.argsort(cc_list, kind="stable")  # file order within each list
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    cc_inst = np.repeat(np.arange(inst_list.size, dtype=np.int32), reps)
    out_first = np.repeat(np.cumsum(reps) - reps, reps)
    pos = np.arange(total, dtype=np.int64) - out_first + np.repeat(first[inst_list], reps)
    return by_list[pos], cc_inst


def _source_name(source: Any, name: str | None) -> str:
    if name:
        return name
    if isinstance(source, str | os.PathLike):
        return str(source)
    return "<midi bytes>"


def _too_big(name: str, size: int) -> MidiError:
    limit = C.MAX_FILE_BYTES >> 20
    return MidiError(f"{name}: file is {size / 2**20:.1f} MiB, over the {limit} MiB limit")


def _table_from_bytes(data: bytes, name: str) -> NoteTable:
    if len(data) > C.MAX_FILE_BYTES:
        raise _too_big(name, len(data))
    buf = np.frombuffer(data, np.uint8)
    err, tpb, ne, tr, tk, kind, ch, a, b = _parse_smf(buf, C.MAX_TRACKS, C.MAX_EVENTS)
    if err != _OK:
        raise MidiError(f"{name}: {_ERROR_TEXT[err]}")
    tr, tk, kind, ch, a, b = tr[:ne], tk[:ne], kind[:ne], ch[:ne], a[:ne], b[:ne]
    start_t, end_t, pitch, vel, inst, inst_chan, inst_list, cc_t, cc_v, cc_l = _assemble(
        ne, tr, tk, kind, ch, a, b
    )
    tempo_mask = kind == _TEMPO
    tempo_ticks, tempi = tk[tempo_mask], b[tempo_mask]
    del buf, tr, tk, kind, ch, a, b, tempo_mask  # free the parse arrays before more are made
    # note-seq's note order: instruments in creation order, notes in the order they closed.
    order = np.argsort(inst, kind="stable")
    start_t, end_t, pitch, vel, inst = (x[order] for x in (start_t, end_t, pitch, vel, inst))
    # CC lists adopted by instruments: an instrument gets every CC of its list (lists may be
    # shared, as in pretty_midi); straggler lists never adopted are dropped.
    cc_idx, cc_inst = _adopted_ccs(cc_l, inst_list, name)
    all_ticks = np.concatenate([start_t, end_t, cc_t[cc_idx]])
    all_secs = _ticks_to_seconds(all_ticks, tempo_ticks, tempi, int(tpb))
    nn = start_t.size
    return NoteTable(
        start=all_secs[:nn],
        end=all_secs[nn : 2 * nn],
        pitch=pitch.astype(np.int32),
        velocity=vel.astype(np.int32),
        instrument=inst.astype(np.int32),
        is_drum=(inst_chan[inst] == C.DRUM_CHANNEL) if nn else np.zeros(0, bool),
        cc_time=all_secs[2 * nn :],
        cc_value=cc_v[cc_idx].astype(np.int32),
        cc_instrument=cc_inst,
    )


def _table_from_pretty_midi(pm) -> NoteTable:
    """As ``note_seq.midi_io.midi_to_note_sequence`` lays out a PrettyMIDI's notes."""
    cols: dict[str, list] = {k: [] for k in ("s", "e", "p", "v", "i", "d", "ct", "cv", "ci")}
    for i, instrument in enumerate(pm.instruments):
        for note in instrument.notes:
            cols["s"].append(note.start)
            cols["e"].append(note.end)
            cols["p"].append(note.pitch)
            cols["v"].append(note.velocity)
            cols["i"].append(i)
            cols["d"].append(bool(instrument.is_drum))
        for cc in instrument.control_changes:
            if cc.number == C.SUSTAIN_CONTROL:
                cols["ct"].append(cc.time)
                cols["cv"].append(cc.value)
                cols["ci"].append(i)
    return _table_from_columns(cols)


def _table_from_note_sequence(ns) -> NoteTable:
    cols: dict[str, list] = {k: [] for k in ("s", "e", "p", "v", "i", "d", "ct", "cv", "ci")}
    for note in ns.notes:
        cols["s"].append(note.start_time)
        cols["e"].append(note.end_time)
        cols["p"].append(note.pitch)
        cols["v"].append(note.velocity)
        cols["i"].append(note.instrument)
        cols["d"].append(bool(note.is_drum))
    for cc in ns.control_changes:
        if cc.control_number == C.SUSTAIN_CONTROL:
            cols["ct"].append(cc.time)
            cols["cv"].append(cc.control_value)
            cols["ci"].append(cc.instrument)
    return _table_from_columns(cols)


def _table_from_columns(cols: dict[str, list]) -> NoteTable:
    return NoteTable(
        start=np.asarray(cols["s"], np.float64),
        end=np.asarray(cols["e"], np.float64),
        pitch=np.asarray(cols["p"], np.int32),
        velocity=np.asarray(cols["v"], np.int32),
        instrument=np.asarray(cols["i"], np.int32),
        is_drum=np.asarray(cols["d"], bool),
        cc_time=np.asarray(cols["ct"], np.float64),
        cc_value=np.asarray(cols["cv"], np.int32),
        cc_instrument=np.asarray(cols["ci"], np.int32),
    )


def read_midi(source: Any, *, name: str | None = None) -> NoteTable:
    """A note table from a MIDI path, MIDI bytes, a ``pretty_midi.PrettyMIDI`` or a NoteSequence.

    Raises :class:`MidiError` (one line: the input's name and the reason) for anything that is not
    a readable MIDI file. Notes are not yet sustain-extended or quantized.
    """
    label = _source_name(source, name)
    if isinstance(source, bytes | bytearray | memoryview):
        return _table_from_bytes(bytes(source), label)
    if isinstance(source, str | os.PathLike):
        path = pathlib.Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise MidiError(f"{label}: no such file") from None
        except OSError as exc:
            raise MidiError(f"{label}: cannot read file ({exc.strerror})") from None
        if path.is_dir():
            raise MidiError(f"{label}: is a directory, not a MIDI file")
        if size > C.MAX_FILE_BYTES:
            raise _too_big(label, size)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise MidiError(f"{label}: cannot read file ({exc.strerror})") from None
        return _table_from_bytes(data, label)
    if hasattr(source, "instruments") and hasattr(source, "get_end_time"):
        return _table_from_pretty_midi(source)
    if hasattr(source, "notes") and hasattr(source, "control_changes"):
        return _table_from_note_sequence(source)
    raise MidiError(
        f"{label}: expected a MIDI path, bytes, pretty_midi.PrettyMIDI or NoteSequence, "
        f"got {type(source).__name__}"
    )
