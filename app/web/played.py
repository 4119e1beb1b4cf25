"""A prime played in the browser, and the piece a call-and-response exchange grows.

The page (``app/web/play.js``) records what is played, from a MIDI keyboard (Web MIDI) or the
on-screen keys, as raw MIDI channel messages with times: ``[[t_ms, status, data1, data2], ...]``,
``t_ms`` counted from the take's first message. Here they become notes and sustain-pedal events,
a MIDI file written with the project's writer (:func:`tokenizer.notes_to_pretty_midi`), and token
ids through :func:`tokenizer.encode`: the path an uploaded file takes, sustain applied the same way.

Messages: note-on (``0x9n``, velocity 1-127), note-off (``0x8n``, or note-on with velocity 0) and
CC64 (``0xBn 64 value``, the sustain pedal), any channel. Other messages (other controllers,
pitch bend, aftertouch) are ignored. A key struck again while it sounds ends the sounding note
first (a piano key cannot sound twice); a note still held at the end of the take ends there.

Every bound on what a page may send is here, checked once.
"""

from __future__ import annotations

import math

import numpy as np

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.tokenizer import (
    MidiError,
    Note,
    decode_notes,
    encode,
    midi_bytes,
    music_seconds,
    notes_to_pretty_midi,
)

MAX_PLAYED_MESSAGES = 20_000  # one take: about 10,000 notes
MAX_PLAYED_SECONDS = 600.0  # one take: ten minutes
MAX_GAP_SECONDS = 2.0  # silence kept between an answer and the phrase played after it
MAX_PIECE_TOKENS = 200_000  # a call-and-response piece stops growing here (~1.5 h of MAESTRO)

NOTE_OFF = 0x80
NOTE_ON = 0x90
CONTROL_CHANGE = 0xB0


def _message(k: int, m) -> tuple[float, int, int, int]:
    if not isinstance(m, list | tuple) or len(m) != 4:
        raise UserError(f"played message {k} is not [time_ms, status, data1, data2]: {m!r:.60}")
    try:
        t, status, d1, d2 = (float(x) for x in m)
    except (TypeError, ValueError):
        raise UserError(f"played message {k} has a value that is not a number: {m!r:.60}") from None
    if not math.isfinite(t) or not 0 <= t <= MAX_PLAYED_SECONDS * 1000:
        raise UserError(
            f"played message {k}: time {t:g} ms is outside the take (0..{MAX_PLAYED_SECONDS:g} s)"
        )
    if not (status.is_integer() and d1.is_integer() and d2.is_integer()):
        raise UserError(f"played message {k}: MIDI bytes must be whole numbers: {m!r:.60}")
    if not (0x80 <= status <= 0xFF and 0 <= d1 <= 127 and 0 <= d2 <= 127):
        raise UserError(f"played message {k} is not a MIDI message: {m!r:.60}")
    return t / 1000.0, int(status), int(d1), int(d2)


def parse_messages(messages) -> tuple[list, list]:
    """Recorded messages -> (notes, pedal): ``tokenizer.Note``s and ``(seconds, CC64 value)``
    pairs, in time order. One-line :class:`UserError` for anything malformed or over a bound."""
    if not isinstance(messages, list | tuple):
        raise UserError("the recording is not a list of MIDI messages")
    if len(messages) > MAX_PLAYED_MESSAGES:
        raise UserError(
            f"the recording has {len(messages):,} MIDI messages, over the "
            f"{MAX_PLAYED_MESSAGES:,} limit: record a shorter take"
        )
    parsed = [_message(k, m) for k, m in enumerate(messages)]
    parsed.sort(key=lambda m: m[0])  # stable: messages of one instant keep their order
    notes: list = []
    pedal: list[tuple[float, int]] = []
    sounding: dict[int, tuple[float, int]] = {}  # pitch -> (start, velocity)

    def end(pitch: int, t: float) -> None:
        start, velocity = sounding.pop(pitch)
        if t > start:
            notes.append(Note(pitch, velocity, start, t))

    for t, status, d1, d2 in parsed:
        kind = status & 0xF0
        if kind == NOTE_ON and d2 > 0:
            if d1 in sounding:
                end(d1, t)
            sounding[d1] = (t, d2)
        elif kind == NOTE_OFF or kind == NOTE_ON:
            if d1 in sounding:
                end(d1, t)
        elif kind == CONTROL_CHANGE and d1 == 64:
            pedal.append((t, d2))
    last = parsed[-1][0] if parsed else 0.0
    for pitch in list(sounding):
        end(pitch, last)
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes, pedal


def played_midi(messages) -> bytes:
    """Recorded messages -> a standard MIDI file (one piano track, the pedal as CC64)."""
    notes, pedal = parse_messages(messages)
    if not notes:
        raise UserError("the recording has no notes: play something first")
    return midi_bytes(notes_to_pretty_midi(notes, pedal))


def _encoded(midi: bytes, name: str) -> np.ndarray:
    """``tokenizer.encode`` of MIDI bytes; a refusal becomes a one-line UserError."""
    try:
        return np.asarray(encode(midi, name=name), np.int32)
    except MidiError as exc:
        raise UserError(str(exc)) from None


def _notes_midi(notes, shift: float = 0.0) -> bytes:
    """Notes moved by ``shift`` seconds, as a MIDI file (the project's writer)."""
    moved = [Note(n.pitch, n.velocity, n.start + shift, n.end + shift) for n in notes]
    return midi_bytes(notes_to_pretty_midi(moved))


def played_ids(messages) -> np.ndarray:
    """Recorded messages -> token ids (no SOS), as :func:`tokenizer.encode` reads a file."""
    return _encoded(played_midi(messages), "the recording")


def append_part(piece: np.ndarray, part: np.ndarray, gap_seconds: float = 0.0) -> np.ndarray:
    """``part`` played ``gap_seconds`` after the end of ``piece`` (both token ids): one piece,
    re-encoded through a MIDI file, so notes still sounding at the end of ``piece`` end there."""
    gap = min(max(float(gap_seconds), 0.0), MAX_GAP_SECONDS) if math.isfinite(gap_seconds) else 0.0
    if piece.size == 0:
        return np.asarray(part, np.int32)
    offset = round(music_seconds(piece) + gap, 2)
    notes = decode_notes(piece) + [
        Note(n.pitch, n.velocity, n.start + offset, n.end + offset) for n in decode_notes(part)
    ]
    ids = _encoded(_notes_midi(notes), "the piece")
    if ids.size > MAX_PIECE_TOKENS:
        raise UserError(
            f"the piece would be {ids.size:,} tokens, over the {MAX_PIECE_TOKENS:,} limit: "
            "download it and start again from a part of it"
        )
    return ids


def from_first_note(ids) -> np.ndarray:
    """``ids`` re-encoded from its first sounding note on (the silence before it dropped, and
    notes that never sound: zero length); empty when nothing sounds. What an answer plays."""
    notes = decode_notes(ids)
    if not notes:
        return np.zeros((0,), np.int32)
    return _encoded(_notes_midi(notes, -min(n.start for n in notes)), "the answer")
