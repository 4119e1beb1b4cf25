"""Hostile MIDI files (GitHub issue 11), built byte by byte with numpy: mido is far too slow for
millions of events. Each file is small enough for the upload cap or the file-size limit and
aims at one stage of the encoder that could cost more than linear time or memory.

``FILES`` maps a name to a function returning the file's bytes; ``tests/test_tokenizer_hostile.py``
runs ``perceiver-midi tokenize`` on each with a timeout and ``benchmarks/hostile.py`` times them.
"""

from __future__ import annotations

import numpy as np

from perceiver_midi.tokenizer import constants as C

NOTE_ON, NOTE_OFF, CONTROL, PROGRAM = 0x90, 0x80, 0xB0, 0xC0


def header(ntracks: int, division: int = 480) -> bytes:
    return (
        b"MThd"
        + (6).to_bytes(4, "big")
        + b"\x00\x01"
        + ntracks.to_bytes(2, "big")
        + division.to_bytes(2, "big")
    )


def track(body: bytes) -> bytes:
    body = body + b"\x00\xff\x2f\x00"  # end of track
    return b"MTrk" + len(body).to_bytes(4, "big") + body


def events(delta, status, a, b=None) -> bytes:
    """Channel events, each as a one-byte delta (< 128), a status byte and its data bytes.

    Arguments are scalars or equal-length arrays; ``b`` is None for one-data-byte messages
    (program change)."""
    cols = [delta, status, a] if b is None else [delta, status, a, b]
    n = max(np.size(c) for c in cols)
    out = np.empty((n, len(cols)), np.uint8)
    for j, c in enumerate(cols):
        out[:, j] = np.broadcast_to(np.asarray(c, np.int64), (n,)).astype(np.uint8)
    return out.tobytes()


def pile(n: int = 400_000) -> bytes:
    """The issue's file: ``n`` overlapping note-ons of one pitch, then a single note-off that
    closes them all (pretty_midi closes every open note of the key): ~1.6 MB."""
    body = events(np.ones(n, np.int64), NOTE_ON, 60, 64) + events(1, NOTE_OFF, 60, 0)
    return header(1) + track(body)


def pedal_held(n: int = 300_000) -> bytes:
    """The pedal held down on channel 0 over ``n`` notes: half are short notes of many pitches
    on channel 0 (under the pedal), half a pile of long notes of one pitch on channel 1 that
    stay sounding to the end (a second instrument, sounding beside the first)."""
    half = n // 2
    k = np.arange(half)
    # Interleave per tick: ch1 note-on, ch0 note-on, ch0 note-off of the previous ch0 note.
    status = np.empty(3 * half, np.int64)
    pitch = np.empty(3 * half, np.int64)
    vel = np.empty(3 * half, np.int64)
    delta = np.zeros(3 * half, np.int64)
    status[0::3], pitch[0::3], vel[0::3], delta[0::3] = NOTE_ON | 1, 40, 64, 1
    status[1::3], pitch[1::3], vel[1::3] = NOTE_ON, 21 + k % 88, 64
    status[2::3], pitch[2::3], vel[2::3] = NOTE_OFF, 21 + (k - 1) % 88, 0
    body = (
        events(0, CONTROL, C.SUSTAIN_CONTROL, 127)
        + events(delta, status, pitch, vel)
        + events(1, CONTROL, C.SUSTAIN_CONTROL, 0)
        + events(1, NOTE_OFF | 1, 40, 0)
    )
    return header(1) + track(body)


def pedal_toggles(n_notes: int = 150_000, n_toggles: int = 150_000) -> bytes:
    """``n_notes`` long notes sounding together (started with the pedal up), then the pedal
    pressed and released ``n_toggles`` times while they sound; then every note ends."""
    pitches = 21 + np.arange(n_notes) % 88
    body = events(np.ones(n_notes, np.int64), NOTE_ON, pitches, 64)
    values = np.tile([127, 0], n_toggles)
    body += events(np.ones(2 * n_toggles, np.int64), CONTROL, C.SUSTAIN_CONTROL, values)
    body += events(1, NOTE_OFF, np.arange(21, 109), 0)
    return header(1) + track(body)


def many_tracks(n_tracks: int = C.MAX_TRACKS, ccs: int = 16, programs: int = 16) -> bytes:
    """The most tracks we accept, each with 16 channels x ``programs`` instruments (program
    changes) sharing ``ccs`` pedal messages sent before the channel's first note (pretty_midi's
    "straggler" list, which every instrument of the channel adopts)."""
    ch = np.arange(16)
    values = 64 + 63 * (np.arange(16 * ccs) % 2)  # pedal down, up, down, ...
    parts = [events(0, CONTROL | np.repeat(ch, ccs), C.SUSTAIN_CONTROL, values)]
    for prog in range(programs):
        parts.append(events(0, PROGRAM | ch, prog))
        parts.append(events(1, NOTE_ON | ch, 60 + ch, 64))
        parts.append(events(1, NOTE_OFF | ch, 60 + ch, 0))
    body = track(b"".join(parts))
    return header(n_tracks) + body * n_tracks


def too_many_tracks() -> bytes:
    """A header announcing 65,535 tracks (refused before reading them)."""
    return header(65_535) + track(events(0, NOTE_ON, 60, 64) + events(1, NOTE_OFF, 60, 0))


def shared_pedal(n_ccs: int = 1_000_000, programs: int = 128) -> bytes:
    """One channel: ``n_ccs`` pedal messages before any note, then ``programs`` instruments
    (program changes), each adopting the whole pedal list: programs x n_ccs pedal events."""
    values = 64 + 63 * (np.arange(n_ccs) % 2)
    body = events(np.ones(n_ccs, np.int64), CONTROL, C.SUSTAIN_CONTROL, values)
    for prog in range(programs):
        body += events(0, PROGRAM, prog) + events(0, NOTE_ON, 60, 64) + events(1, NOTE_OFF, 60, 0)
    return header(1) + track(body)


def tempo_flood(size: int = 4 << 20) -> bytes:
    """Track 0 made of set_tempo events (7 bytes each) up to ``size`` bytes, and one note."""
    n = (size - 64) // 7
    tempi = 400_000 + np.arange(n) % 200_000
    rows = np.empty((n, 7), np.uint8)
    rows[:, 0] = 1
    rows[:, 1:4] = (0xFF, 0x51, 0x03)
    rows[:, 4], rows[:, 5], rows[:, 6] = tempi >> 16, (tempi >> 8) & 0xFF, tempi & 0xFF
    body = rows.tobytes() + events(0, NOTE_ON, 60, 64) + events(1, NOTE_OFF, 60, 0)
    return header(1) + track(body)


def tiny_notes(size: int = C.MAX_FILE_BYTES) -> bytes:
    """A file of ``size`` bytes of one-tick notes in running status (3 bytes an event)."""
    n = (size - 64) // 6
    a = np.empty(2 * n, np.int64)
    b = np.empty(2 * n, np.int64)
    a[0::2] = a[1::2] = 21 + np.arange(n) % 88
    b[0::2], b[1::2] = 64, 0  # note_on velocity 0 is a note-off
    ev = np.empty((2 * n, 3), np.uint8)
    ev[:, 0], ev[:, 1], ev[:, 2] = 1, a, b
    body = events(0, NOTE_ON, 21, 0) + ev.tobytes()  # sets the running status
    return header(1) + track(body)


def tiny_programs(size: int = C.MAX_FILE_BYTES) -> bytes:
    """A file of ``size`` bytes of program changes in running status (2 bytes an event)."""
    n = (size - 64) // 2
    ev = np.zeros((n, 2), np.uint8)
    ev[:, 1] = np.arange(n) % 128
    body = events(0, PROGRAM, 0) + ev.tobytes() + events(0, NOTE_ON, 60, 64)
    body += events(1, NOTE_OFF, 60, 0)
    return header(1) + track(body)


FILES = {
    "pile_400k": pile,
    "pedal_held_300k": pedal_held,
    "pedal_toggles_150k": pedal_toggles,
    "tracks_1024": many_tracks,
    "tracks_65535": too_many_tracks,
    "shared_pedal_128x1M": shared_pedal,
    "tempo_flood_4MiB": tempo_flood,
    "tiny_notes_4MiB": lambda: tiny_notes(4 << 20),
    "tiny_notes_32MiB": tiny_notes,
    "tiny_programs_32MiB": tiny_programs,
    # The most work the limits let in: 8M events (3.99M notes), and 4M pedal messages over
    # 2M sounding notes; both are refused by the token limit after the pedal pass.
    "tiny_notes_8M_events": lambda: tiny_notes(6 * 3_990_000 + 64),
    "pedal_toggles_2M": lambda: pedal_toggles(2_000_000, 2_000_000),
}
