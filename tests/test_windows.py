"""Music time and prime windows, on hand-made id runs."""

import numpy as np
import pytest

from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer import (
    cut_last_seconds,
    cut_last_tokens,
    cut_range,
    music_seconds,
    shift_tokens,
)

V10 = C.VELOCITY_FIRST_ID + 9  # VELOCITY bin 10


def on(p):
    return C.NOTE_ON_FIRST_ID + p


def off(p):
    return C.NOTE_OFF_FIRST_ID + p


def shift(steps):
    return C.TIME_SHIFT_FIRST_ID + steps - 1


# 0.0 s: C on; 1.0 s: C off, E on; 1.5 s: E off, G on; 3.0 s: G off.
PIECE = [V10, on(60), shift(100), off(60), on(64), shift(50), off(64), on(67)]
PIECE += [shift(100), shift(50), off(67)]


def test_music_seconds_and_shift_tokens():
    assert music_seconds(PIECE) == pytest.approx(3.0)
    assert music_seconds([]) == 0.0
    assert shift_tokens(250) == [shift(100), shift(100), shift(50)]
    assert shift_tokens(0) == []


def test_cut_last_seconds_restates_velocity():
    # The last 2 s start at 1.0 s: the events from "C off" on, with the velocity re-stated.
    got = cut_last_seconds(PIECE, 2.0)
    assert got.tolist() == [V10, off(60), on(64), shift(50), off(64), on(67)] + PIECE[-3:]
    assert music_seconds(got) == pytest.approx(2.0)


def test_cut_range_keeps_open_notes_and_trailing_silence():
    # 0.5 .. 2.0 s: first event inside is at 1.0 s (leading silence dropped); G (1.5 s) is
    # still sounding at 2.0 s and stays open; 0.5 s of silence is kept up to the window's end.
    got = cut_range(PIECE, 0.5, 2.0)
    assert got.tolist() == [V10, off(60), on(64), shift(50), off(64), on(67), shift(50)]


def test_cut_range_whole_and_empty():
    # Events strictly before 3.0 s: all but the final NOTE_OFF; silence re-made to 3.0 s.
    np.testing.assert_array_equal(cut_range(PIECE, 0.0, 3.0), PIECE[:-1])
    assert cut_range(PIECE, 2.0, 2.5).tolist() == [shift(50)]  # nothing plays in 2.0..2.5
    with pytest.raises(ValueError):
        cut_range(PIECE, 2.0, 1.0)


def test_cut_last_tokens():
    # The last 3 tokens would start on shifts: the cut moves to the next event.
    assert cut_last_tokens(PIECE, 4).tolist() == [off(67)]
    got = cut_last_tokens(PIECE, 7)
    # Starts on an event (not a shift); re-states the velocity before the first NOTE_ON.
    assert got.tolist() == [V10, off(64), on(67), shift(100), shift(50), off(67)]
    assert cut_last_tokens(PIECE, 100).tolist() == PIECE
