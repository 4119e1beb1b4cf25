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


# One prime-window rule on every surface (app.core.pipeline.Window.from_options): the CLI's options,
# a batch row's columns and /continue's parameters give the same window for the same request.
WINDOW_CASES = [
    # (prime_seconds, prime_tokens, prime_range) -> the window
    ((None, None, None), {"kind": "last_seconds", "seconds": 20.0}),
    ((8.0, None, None), {"kind": "last_seconds", "seconds": 8.0}),
    ((None, 30, None), {"kind": "last_tokens", "tokens": 30}),
    ((8.0, 30, None), {"kind": "last_seconds", "seconds": 8.0, "max_tokens": 30}),
    ((None, None, "1:3"), {"kind": "range", "start": 1.0, "end": 3.0}),
    ((None, 30, "1:"), {"kind": "range", "start": 1.0, "end": None, "max_tokens": 30}),
]


def _cli_window(seconds, tokens, rng):
    import argparse

    from perceiver_midi.app.generate_cli import _add_sampling, _add_window, settings_from_args

    parser = argparse.ArgumentParser()
    _add_sampling(parser)
    _add_window(parser)
    argv = []
    for flag, v in (
        ("--prime-seconds", seconds),
        ("--prime-tokens", tokens),
        ("--prime-range", rng),
    ):
        if v is not None:
            argv += [flag, str(v)]
    return settings_from_args(parser.parse_args(argv)).window


def _batch_window(seconds, tokens, rng):
    from perceiver_midi.app.batch.plan import _row_settings
    from perceiver_midi.app.core.pipeline import Settings

    row = {"prime": "x.mid", "prime_seconds": seconds, "prime_tokens": tokens, "prime_range": rng}
    row = {k: ("" if v is None else str(v)) for k, v in row.items()}  # as CSV cells
    return _row_settings(row, Settings(), "row").window


def _api_window(composer, prime, seconds, tokens, rng):
    from perceiver_midi.app.web.handlers import GenerateRequest

    plan = composer.api_plan(prime, GenerateRequest(), seconds or 0, tokens or 0, rng or "")
    return plan.settings.window


@pytest.mark.parametrize("options, expected", WINDOW_CASES)
def test_every_surface_reads_the_prime_window_options_alike(
    options, expected, tiny_model, short_prime, tmp_path
):
    from perceiver_midi.app.core.pipeline import Window
    from perceiver_midi.app.web.handlers import Composer
    from perceiver_midi.app.web.session import read_upload

    composer = Composer(tiny_model, root=tmp_path / "web")
    prime = read_upload(str(short_prime), max_bytes=1 << 20)
    windows = [
        Window.from_options(*options),
        _cli_window(*options),
        _batch_window(*options),
        _api_window(composer, prime, *options),
    ]
    assert [w.to_dict() for w in windows] == [expected] * 4


def test_seconds_and_range_together_are_refused_on_every_surface():
    from perceiver_midi.app.core.errors import UserError
    from perceiver_midi.app.core.pipeline import Window

    with pytest.raises(UserError, match="contradict"):
        Window.from_options(8.0, None, "1:3")
    with pytest.raises(UserError, match="contradict"):
        _cli_window(8.0, None, "1:3")
    with pytest.raises(UserError, match="contradict"):
        _batch_window(8.0, None, "1:3")
