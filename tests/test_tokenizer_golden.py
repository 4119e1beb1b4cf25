"""Golden table: small hand-written performances and their ids, worked out by hand (one comment
per id). Each is encoded from a PrettyMIDI and from the MIDI bytes pretty_midi writes."""

import io

import numpy as np
import pretty_midi
import pytest

from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer import encode


def _pm(notes, pedal=(), drums=()):
    pm = pretty_midi.PrettyMIDI(resolution=1000, initial_tempo=60.0)  # 1 tick = 1 ms
    piano = pretty_midi.Instrument(program=0)
    for pitch, vel, start, end in notes:
        piano.notes.append(pretty_midi.Note(vel, pitch, start, end))
    for time, value in pedal:
        piano.control_changes.append(pretty_midi.ControlChange(64, value, time))
    pm.instruments.append(piano)
    if drums:
        kit = pretty_midi.Instrument(program=0, is_drum=True)
        kit.notes = [pretty_midi.Note(v, p, s, e) for p, v, s, e in drums]
        pm.instruments.append(kit)
    return pm


GOLDEN = {
    "one note": (
        _pm([(60, 80, 0.0, 0.5)]),
        [
            378,  # VELOCITY bin 20: (80 - 1) // 4 + 1
            63,  # NOTE_ON 60
            308,  # TIME_SHIFT 50 steps (0.5 s)
            191,  # NOTE_OFF 60
        ],
    ),
    "chord, long gap, zero-length note": (
        _pm([(64, 100, 0.0, 0.1), (67, 100, 0.0, 0.1), (72, 30, 1.6, 1.604)]),
        [
            383,  # VELOCITY bin 25: (100 - 1) // 4 + 1
            67,  # NOTE_ON 64 (lower pitch first among equal starts)
            70,  # NOTE_ON 67 (same velocity bin: no VELOCITY)
            268,  # TIME_SHIFT 10 steps
            195,  # NOTE_OFF 64
            198,  # NOTE_OFF 67
            358,  # TIME_SHIFT 100 steps: a 150-step gap is split, longest first
            308,  # TIME_SHIFT 50 steps
            366,  # VELOCITY bin 8: (30 - 1) // 4 + 1
            75,  # NOTE_ON 72 at step 160
            259,  # TIME_SHIFT 1 step: 1.604 s rounds to step 160 too, so the note gets one step
            203,  # NOTE_OFF 72
        ],
    ),
    "sustain pedal": (
        # A (60) 0.0-0.2, pedal down at 0.1, C (64) 0.3-0.4, A again 0.5-0.6, pedal up at 1.0.
        # The pedal holds A until it is struck again at 0.5, and holds C and the second A to 1.0.
        _pm(
            [(60, 64, 0.0, 0.2), (64, 64, 0.3, 0.4), (60, 64, 0.5, 0.6)],
            pedal=[(0.1, 127), (1.0, 0)],
        ),
        [
            374,  # VELOCITY bin 16: (64 - 1) // 4 + 1
            63,  # NOTE_ON 60
            288,  # TIME_SHIFT 30 steps
            67,  # NOTE_ON 64
            278,  # TIME_SHIFT 20 steps
            191,  # NOTE_OFF 60: ended by the re-strike under the pedal
            63,  # NOTE_ON 60 (velocity unchanged)
            308,  # TIME_SHIFT 50 steps: to the pedal release at 1.0 s
            195,  # NOTE_OFF 64 (earlier note first among equal steps)
            191,  # NOTE_OFF 60
        ],
    ),
    "half-step rounding and drums": (
        _pm([(72, 127, 0.005, 0.25)], drums=[(36, 100, 0.0, 0.1)]),
        [
            259,  # TIME_SHIFT 1 step: 0.005 s rounds half up to step 1 (the drum is left out)
            390,  # VELOCITY bin 32: (127 - 1) // 4 + 1
            75,  # NOTE_ON 72
            282,  # TIME_SHIFT 24 steps: to step 25
            203,  # NOTE_OFF 72
        ],
    ),
    "pedal down/up at the same time as notes": (
        # Pedal events sort before notes at equal times (note-seq): the pedal goes down at 0.0
        # before the note starts, so the note is held until the release at 0.3.
        _pm([(48, 1, 0.0, 0.1)], pedal=[(0.0, 64), (0.3, 63)]),
        [
            359,  # VELOCITY bin 1: (1 - 1) // 4 + 1
            51,  # NOTE_ON 48
            288,  # TIME_SHIFT 30 steps (CC value 63 < 64 releases the pedal)
            179,  # NOTE_OFF 48
        ],
    ),
}


@pytest.mark.parametrize("case", GOLDEN)
def test_golden_ids(case):
    pm, expected = GOLDEN[case]
    np.testing.assert_array_equal(encode(pm), expected)
    buf = io.BytesIO()
    pm.write(buf)
    np.testing.assert_array_equal(encode(buf.getvalue()), expected)


def test_sos_eos_flags():
    pm, expected = GOLDEN["one note"]
    ids = encode(pm, add_sos=True, add_eos=True)
    assert ids.tolist() == [C.SOS_ID, *expected, C.EOS_ID]
    assert ids.dtype == np.int32


def test_vocabulary_layout():
    assert (C.PAD_ID, C.EOS_ID, C.SOS_ID) == (0, 1, 2)
    assert C.VOCAB_SIZE == 391
    assert C.NOTE_ON_FIRST_ID == 3 and C.NOTE_OFF_FIRST_ID == 131
    assert C.TIME_SHIFT_FIRST_ID == 259 and C.TIME_SHIFT_LAST_ID == 358
    assert C.VELOCITY_FIRST_ID == 359 and C.VELOCITY_FIRST_ID + C.NUM_VELOCITY_BINS == 391


def test_vocabulary_matches_note_seq():
    note_seq = pytest.importorskip("note_seq")
    enc = note_seq.PerformanceOneHotEncoding(num_velocity_bins=32, max_shift_steps=100)
    assert enc.num_classes + C.NUM_RESERVED == C.VOCAB_SIZE
    ev = note_seq.PerformanceEvent
    assert enc.encode_event(ev(ev.NOTE_ON, 0)) + 3 == C.NOTE_ON_FIRST_ID
    assert enc.encode_event(ev(ev.NOTE_OFF, 0)) + 3 == C.NOTE_OFF_FIRST_ID
    assert enc.encode_event(ev(ev.TIME_SHIFT, 1)) + 3 == C.TIME_SHIFT_FIRST_ID
    assert enc.encode_event(ev(ev.TIME_SHIFT, 100)) + 3 == C.TIME_SHIFT_LAST_ID
    assert enc.encode_event(ev(ev.VELOCITY, 1)) + 3 == C.VELOCITY_FIRST_ID
