"""Bad input: one clear MidiError naming the input and the reason; never a crash or a hang."""

import pathlib

import midi_factory as mf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perceiver_midi.tokenizer import MidiError, encode
from perceiver_midi.tokenizer import constants as C

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples/bach_prelude_c.mid"
GOOD = mf.midi_bytes([[mf.tempo(0, 120)], [mf.on(0, 60), mf.off(480, 60)]])


def _header(ntracks=1, division=480, length=6):
    return (
        b"MThd"
        + length.to_bytes(4, "big")
        + b"\x00\x01"
        + ntracks.to_bytes(2, "big")
        + (division.to_bytes(2, "big"))
    )


def _track(body: bytes) -> bytes:
    return b"MTrk" + len(body).to_bytes(4, "big") + body


def _vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


CASES = {
    "not midi": (b"RIFF....WAVEfmt " + bytes(100), "not a MIDI file"),
    "empty": (b"", "not a MIDI file"),
    "truncated": (GOOD[: len(GOOD) - 9], "truncated"),
    "truncated header": (GOOD[:12], "truncated"),
    "chunk longer than file": (_header() + b"MTrk\x7f\xff\xff\xff\x00\x90", "truncated"),
    "no notes": (mf.midi_bytes([[mf.tempo(0, 100)], [mf.pedal(0, 127)]]), "contains no notes"),
    "only drums": (mf.midi_bytes([[mf.on(0, 36, ch=9), mf.off(100, 36, ch=9)]]), "no notes"),
    "note at hour 30": (
        _header(division=1000)
        + _track(
            b"\x00\xff\x51\x03\x0f\x42\x40"  # 60 bpm: 1000 ticks per second
            + _vlq(30 * 3600 * 1000)
            + b"\x90\x3c\x40"
            + b"\x10\x80\x3c\x00"
        ),
        "over the 4 h limit",
    ),
    "running status first": (_header() + _track(b"\x00\x3c\x40"), "running status"),
    "data byte >= 128": (_header() + _track(b"\x00\x90\x3c\xc0"), "data byte"),
    "smpte": (_header(division=0xE728) + _track(b"\x00\x90\x3c\x40"), "SMPTE"),
    "zero division": (_header(division=0) + _track(b""), "header"),
    "bad header length": (_header(length=2) + _track(b""), "header"),
    "long vlq": (_header() + _track(b"\x81\x81\x81\x81\x01\x90\x3c\x40"), "variable-length"),
    "tempo 0": (_header() + _track(b"\x00\xff\x51\x03\x00\x00\x00"), "set_tempo"),
    "too many tracks": (_header(ntracks=C.MAX_TRACKS + 1), "too many tracks"),
    "undefined status": (_header() + _track(b"\x00\xf4"), "undefined status"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_bytes_raise_clear_error(case, tmp_path):
    data, reason = CASES[case]
    path = tmp_path / "upload.mid"
    path.write_bytes(data)
    with pytest.raises(MidiError) as err:
        encode(path)
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message
    assert reason in message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(MidiError, match="no such file"):
        encode(tmp_path / "nope.mid")
    with pytest.raises(MidiError, match="is a directory"):
        encode(tmp_path)


def test_huge_file_refused_before_reading(tmp_path):
    path = tmp_path / "huge.mid"
    with open(path, "wb") as f:
        f.truncate(C.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(MidiError, match="over the 32 MiB limit"):
        encode(path)
    with pytest.raises(MidiError, match="over the 32 MiB limit"):
        encode(b"MThd" + bytes(C.MAX_FILE_BYTES))


def test_wrong_type():
    with pytest.raises(MidiError, match="expected a MIDI path"):
        encode(12345)


def test_example_is_valid_and_garbage_after_it_is_bounded():
    ids = encode(EXAMPLE)
    assert ids.size > 100
    # A header promising one track followed by megabytes of noise finishes with an error or ids.
    rng = np.random.default_rng(0)
    noise = _header() + _track(rng.integers(0, 128, 4_000_000, dtype=np.uint8).tobytes())
    try:
        encode(noise)
    except MidiError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_files_never_crash(data):
    """Flip, cut or insert bytes in a valid file: the result is ids or a MidiError, nothing else."""
    raw = bytearray(EXAMPLE.read_bytes()[:600])
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            raw[pos] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos : pos + data.draw(st.integers(1, 50))]
        else:
            raw[pos:pos] = bytes(data.draw(st.lists(st.integers(0, 255), max_size=8)))
        if not raw:
            raw = bytearray(b"x")
    try:
        ids = encode(bytes(raw))
    except MidiError as exc:
        assert "\n" not in str(exc)
    else:
        assert ids.min() >= C.NOTE_ON_FIRST_ID and ids.max() < C.VOCAB_SIZE
