"""note-seq is the oracle: our ids must equal note-seq's MAESTRO encoding + 3, token for token."""

import csv
import warnings

import midi_factory as mf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perceiver_midi.tokenizer import MidiError, encode

note_seq = pytest.importorskip("note_seq")
from note_seq import midi_io  # noqa: E402
from note_seq_oracle import note_seq_ids  # noqa: E402


def test_maestro_test_split_equals_note_seq(maestro_root):
    with open(maestro_root / "maestro-v3.0.0.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    # 24 pieces spread over the test split (every year of recordings is represented).
    chosen = rows[:: max(1, len(rows) // 24)][:24]
    assert len(chosen) >= 20
    for row in chosen:
        path = maestro_root / row["midi_filename"]
        expected = note_seq_ids(midi_io.midi_file_to_note_sequence(str(path)))
        ours = encode(path)
        assert ours.shape == expected.shape, row["midi_filename"]
        mismatch = np.flatnonzero(ours != expected)
        assert mismatch.size == 0, f"{row['midi_filename']}: first mismatch at {mismatch[:3]}"


# Random multi-track, multi-channel MIDI files exercising pretty_midi's corner cases: same-pitch
# overlaps, note-offs as note_on velocity 0, zero-length notes, notes never closed, pedal on
# several channels and before the first note, program changes, drums, tempo changes.
@st.composite
def random_midi(draw):
    n_tracks = draw(st.integers(1, 3))
    tracks = [[mf.tempo(0, draw(st.sampled_from([60, 97, 120, 133.3])))]]
    for _ in range(draw(st.integers(0, 2))):
        tracks[0].append(mf.tempo(draw(st.integers(1, 4000)), draw(st.integers(40, 200))))
    for _ in range(n_tracks):
        events = []
        for _ in range(draw(st.integers(0, 25))):
            ch = draw(st.sampled_from([0, 0, 0, 1, 9]))
            pitch = draw(st.integers(58, 63))  # few pitches: many same-pitch interactions
            t0 = draw(st.integers(0, 3000))
            dur = draw(st.sampled_from([0, 1, 3, 5, 24, 100, 480, 1500]))
            events.append(mf.on(t0, pitch, draw(st.integers(1, 127)), ch))
            if draw(st.integers(0, 9)):  # occasionally never closed
                events.append(mf.off(t0 + dur, pitch, ch, zero_velocity_on=draw(st.booleans())))
        for _ in range(draw(st.integers(0, 8))):
            ch = draw(st.sampled_from([0, 0, 1]))
            events.append(mf.pedal(draw(st.integers(0, 4000)), draw(st.integers(0, 127)), ch))
        if draw(st.booleans()):
            events.append(mf.program(draw(st.integers(0, 2000)), draw(st.integers(0, 3))))
        tracks.append(events)
    return mf.midi_bytes(tracks, ticks_per_beat=draw(st.sampled_from([96, 220, 480, 1000])))


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(random_midi())
def test_random_midi_equals_note_seq(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = note_seq_ids(midi_io.midi_to_note_sequence(data))
    if expected.size == 0:
        with pytest.raises(MidiError, match="no notes"):
            encode(data)
    else:
        np.testing.assert_array_equal(encode(data), expected)
