"""Token ids -> notes -> PrettyMIDI / MIDI file / NoteSequence.

Decoding follows note-seq's ``Performance.to_sequence``: TIME_SHIFT advances the clock, VELOCITY
sets the velocity of later NOTE_ONs (100 before any VELOCITY, as note-seq), NOTE_OFF closes the
oldest open note of its pitch (FIFO), a NOTE_OFF with nothing open is ignored, zero-length notes
are dropped, notes still open at the end are closed there, reserved ids (PAD/EOS/SOS) are skipped.
Linear in the number of ids (compiled with numba where installed), plus one sort of the notes.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile

import numpy as np

from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer._jit import njit

DEFAULT_VELOCITY = 100  # note-seq's to_sequence default
# A MIDI clock of exactly 1000 ticks per second (120 bpm, 500 ticks per beat): every 10 ms step
# lands on a whole tick, so written files re-encode to the same ids.
MIDI_RESOLUTION = 500
MIDI_TEMPO_BPM = 120.0


@dataclasses.dataclass(frozen=True, order=True)
class Note:
    pitch: int
    velocity: int
    start: float  # seconds
    end: float  # seconds


def _check_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be one-dimensional, got shape {arr.shape}")
    if arr.size > C.MAX_IDS_IN:
        raise ValueError(f"{arr.size:,} ids is over the {C.MAX_IDS_IN:,} limit")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= C.VOCAB_SIZE):
        bad = arr[(arr < 0) | (arr >= C.VOCAB_SIZE)][0]
        raise ValueError(f"id {bad} is outside the vocabulary 0..{C.VOCAB_SIZE - 1}")
    return arr


def velocity_from_bin(vbin: int) -> int:
    """note-seq's ``velocity_bin_to_velocity``: the lowest velocity of the bin."""
    return C.MIN_VELOCITY + (vbin - 1) * C.VELOCITY_BIN_SIZE


@njit
def _decode_loop(arr, default_velocity):
    """The notes of checked ids, unsorted: (start step, end step, pitch, velocity, NOTE_ON index).

    Linear: the open notes of each pitch are a FIFO linked through NOTE_ON ordinals (head and
    tail per pitch), so a NOTE_OFF pops its note in constant time.
    """
    n_on = 0
    for k in range(arr.size):
        if C.NOTE_ON_FIRST_ID <= arr[k] < C.NOTE_OFF_FIRST_ID:
            n_on += 1
    on_step = np.empty(n_on, np.int64)
    on_vel = np.empty(n_on, np.int64)
    on_index = np.empty(n_on, np.int64)
    nxt = np.full(n_on, -1, np.int64)
    head = np.full(C.NUM_PITCHES, -1, np.int64)
    tail = np.full(C.NUM_PITCHES, -1, np.int64)
    out_start = np.empty(n_on, np.int64)
    out_end = np.empty(n_on, np.int64)
    out_pitch = np.empty(n_on, np.int64)
    out_vel = np.empty(n_on, np.int64)
    out_index = np.empty(n_on, np.int64)
    step = 0
    velocity = default_velocity
    j = 0
    w = 0
    for k in range(arr.size):
        tok = arr[k]
        if tok < C.NOTE_OFF_FIRST_ID:
            if tok >= C.NOTE_ON_FIRST_ID:
                p = tok - C.NOTE_ON_FIRST_ID
                on_step[j] = step
                on_vel[j] = velocity
                on_index[j] = k
                if head[p] == -1:
                    head[p] = j
                else:
                    nxt[tail[p]] = j
                tail[p] = j
                j += 1
        elif tok < C.TIME_SHIFT_FIRST_ID:
            p = tok - C.NOTE_OFF_FIRST_ID
            q = head[p]
            if q != -1:  # a NOTE_OFF with nothing open is ignored
                head[p] = nxt[q]
                if step > on_step[q]:  # zero-length notes are dropped
                    out_start[w] = on_step[q]
                    out_end[w] = step
                    out_pitch[w] = p
                    out_vel[w] = on_vel[q]
                    out_index[w] = on_index[q]
                    w += 1
        elif tok < C.VELOCITY_FIRST_ID:
            step += tok - C.TIME_SHIFT_FIRST_ID + 1
        else:
            velocity = C.MIN_VELOCITY + (tok - C.VELOCITY_FIRST_ID) * C.VELOCITY_BIN_SIZE
    for p in range(C.NUM_PITCHES):  # notes still open at the end are closed there
        q = head[p]
        while q != -1:
            if step > on_step[q]:
                out_start[w] = on_step[q]
                out_end[w] = step
                out_pitch[w] = p
                out_vel[w] = on_vel[q]
                out_index[w] = on_index[q]
                w += 1
            q = nxt[q]
    return out_start[:w], out_end[:w], out_pitch[:w], out_vel[:w], out_index[:w]


def decode_arrays(ids) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Token ids -> the notes of :func:`decode_notes` as arrays (pitch, velocity, start seconds,
    end seconds), in the same order; linear time plus one sort, no Python object per note."""
    arr = _check_ids(ids)
    start, end, pitch, vel, index = _decode_loop(arr, DEFAULT_VELOCITY)
    # Sorted by (start, pitch); ties keep the NOTE_ON order, so that ids -> MIDI -> ids is exact
    # wherever MIDI can hold it.
    order = np.lexsort((index, pitch, start))
    sps = float(C.STEPS_PER_SECOND)
    return (
        pitch[order].astype(np.int32),
        vel[order].astype(np.int32),
        start[order] / sps,
        end[order] / sps,
    )


def decode_notes(ids) -> list[Note]:
    """Token ids -> notes sorted by (start, pitch)."""
    pitch, vel, start, end = decode_arrays(ids)
    cols = (pitch.tolist(), vel.tolist(), start.tolist(), end.tolist())
    return [Note(p, v, s, e) for p, v, s, e in zip(*cols, strict=True)]


def notes_to_pretty_midi(notes: list[Note], pedal=()):
    """Notes (and sustain-pedal events: ``(seconds, CC64 value)`` pairs) -> one piano track."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=MIDI_RESOLUTION, initial_tempo=MIDI_TEMPO_BPM)
    piano = pretty_midi.Instrument(program=C.ACOUSTIC_GRAND_PIANO, name="Piano")
    piano.notes = [pretty_midi.Note(n.velocity, n.pitch, n.start, n.end) for n in notes]
    piano.control_changes = [
        pretty_midi.ControlChange(C.SUSTAIN_CONTROL, int(value), float(t)) for t, value in pedal
    ]
    pm.instruments.append(piano)
    return pm


def decode(ids):
    """Token ids -> ``pretty_midi.PrettyMIDI`` with one acoustic grand piano track."""
    return notes_to_pretty_midi(decode_notes(ids))


def decode_to_note_sequence(ids):
    """Token ids -> ``note_seq.NoteSequence`` (imports note-seq, which is slow to import).

    note-seq is optional (``pip install note-seq``); without it this raises ImportError."""
    try:
        from note_seq.protobuf import music_pb2
    except ImportError:
        raise ImportError(
            "decode_to_note_sequence needs note-seq, which is not installed: pip install note-seq"
        ) from None

    ns = music_pb2.NoteSequence()
    ns.ticks_per_quarter = MIDI_RESOLUTION
    ns.tempos.add(qpm=MIDI_TEMPO_BPM)
    for n in decode_notes(ids):
        ns.notes.add(
            pitch=n.pitch,
            velocity=n.velocity,
            start_time=n.start,
            end_time=n.end,
            program=C.ACOUSTIC_GRAND_PIANO,
        )
        ns.total_time = max(ns.total_time, n.end)
    return ns


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def midi_bytes(pm) -> bytes:
    """Serialize a PrettyMIDI to standard MIDI file bytes."""
    import io

    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def write_midi(ids_or_pm, path: str | os.PathLike) -> pathlib.Path:
    """Write token ids (or a PrettyMIDI) to a MIDI file atomically; returns the path."""
    pm = ids_or_pm if hasattr(ids_or_pm, "instruments") else decode(ids_or_pm)
    atomic_write_bytes(path, midi_bytes(pm))
    return pathlib.Path(path)
