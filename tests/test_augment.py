"""Token-level augmentation: transposition equals re-encoding the transposed MIDI; stretch
scales time."""

import pathlib

import numpy as np
import pretty_midi
import pytest

from perceiver_midi.tokenizer import decode_notes, encode, music_seconds
from perceiver_midi.tokenizer.augment import augment

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples/bach_prelude_c.mid"


def _transposed(pm, k):
    out = pretty_midi.PrettyMIDI(resolution=pm.resolution, initial_tempo=120)
    for inst in pm.instruments:
        new = pretty_midi.Instrument(program=inst.program, is_drum=inst.is_drum)
        new.notes = [
            pretty_midi.Note(n.velocity, n.pitch + k, n.start, n.end)
            for n in inst.notes
            if 0 <= n.pitch + k <= 127
        ]
        new.control_changes = list(inst.control_changes)
        out.instruments.append(new)
    return out


@pytest.mark.parametrize("k", [-3, -1, 1, 3])
def test_transpose_equals_reencoding(k):
    pm = pretty_midi.PrettyMIDI(str(EXAMPLE))
    np.testing.assert_array_equal(augment(encode(pm), k), encode(_transposed(pm, k)))


def test_transpose_drops_notes_leaving_the_piano():
    pm = pretty_midi.PrettyMIDI(resolution=1000, initial_tempo=60)
    inst = pretty_midi.Instrument(0)
    inst.notes = [pretty_midi.Note(80, 126, 0.0, 0.5), pretty_midi.Note(80, 60, 0.2, 0.3)]
    pm.instruments.append(inst)
    got = augment(encode(pm), 3)
    np.testing.assert_array_equal(got, encode(_transposed(pm, 3)))
    assert [n.pitch for n in decode_notes(got)] == [63]


@pytest.mark.parametrize("stretch", [0.95, 1.05])
def test_stretch_scales_time(stretch):
    ids = encode(EXAMPLE)
    got = augment(ids, 0, stretch)
    assert abs(music_seconds(got) - stretch * music_seconds(ids)) <= 0.01
    before, after = decode_notes(ids), decode_notes(got)
    assert len(before) == len(after)
    for a, b in zip(
        sorted(before, key=lambda n: (n.start, n.pitch)),
        sorted(after, key=lambda n: (n.start, n.pitch)),
        strict=True,
    ):
        assert a.pitch == b.pitch and a.velocity == b.velocity
        assert abs(b.start - stretch * a.start) <= 0.005 + 1e-9
        assert abs(b.end - stretch * a.end) <= 0.005 + 1e-9


def test_identity_and_dtype():
    ids = encode(EXAMPLE).astype(np.uint16)
    assert augment(ids).dtype == np.uint16
    np.testing.assert_array_equal(augment(ids, 0, 1.0), ids)
    np.testing.assert_array_equal(augment(ids.astype(np.int32), 0, 1.0), ids)
