"""Piano rolls of the web app (app/web/media.py): one raster image whatever the number of notes."""

import io

import numpy as np
import pytest

from perceiver_midi.app.web import media
from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer import decode_arrays, decode_notes

PNG = b"\x89PNG\r\n\x1a\n"


def _piece(n_notes: int, seed: int = 0) -> np.ndarray:
    """``n_notes`` notes over six octaves, several sounding at once, velocities changing."""
    rng = np.random.default_rng(seed)
    pitch = rng.integers(36, 100, n_notes)
    ids = np.empty((n_notes, 5), np.int32)
    ids[:, 0] = C.VELOCITY_FIRST_ID + rng.integers(0, C.NUM_VELOCITY_BINS, n_notes)
    ids[:, 1] = C.NOTE_ON_FIRST_ID + pitch
    ids[:, 2] = C.TIME_SHIFT_FIRST_ID + rng.integers(0, 3, n_notes)  # 1..3 steps
    ids[:, 3] = C.NOTE_OFF_FIRST_ID + np.roll(pitch, 2)  # ends the note two before
    ids[:, 4] = C.TIME_SHIFT_FIRST_ID
    return ids.reshape(-1)


def _two_notes() -> np.ndarray:
    """Pitch 60 in 0..1 s, pitch 72 in 2..3 s, loud."""
    return np.array(
        [C.VELOCITY_FIRST_ID + 31, C.NOTE_ON_FIRST_ID + 60, C.TIME_SHIFT_LAST_ID]
        + [C.NOTE_OFF_FIRST_ID + 60, C.TIME_SHIFT_LAST_ID, C.NOTE_ON_FIRST_ID + 72]
        + [C.TIME_SHIFT_LAST_ID, C.NOTE_OFF_FIRST_ID + 72],
        np.int32,
    )


@pytest.fixture
def figures(monkeypatch):
    """The matplotlib figures the roll functions save."""
    saved = []
    save = media._save

    def spy(fig, path):
        saved.append(fig)
        return save(fig, path)

    monkeypatch.setattr(media, "_save", spy)
    return saved


def _artists(fig) -> int:
    return len(fig.findobj())


def test_decode_arrays_match_decode_notes():
    ids = _piece(500)
    pitch, vel, start, end = decode_arrays(ids)
    notes = decode_notes(ids)
    assert [(n.pitch, n.velocity, n.start, n.end) for n in notes] == list(
        zip(pitch.tolist(), vel.tolist(), start.tolist(), end.tolist(), strict=True)
    )


def test_roll_of_200k_notes_is_one_image_with_few_artists(tmp_path, figures):
    small, big = _piece(20), _piece(200_000)
    assert len(decode_notes(big)) > 190_000
    media.prime_roll_png(small, tmp_path / "small.png", window=(0.1, 0.3))
    media.prime_roll_png(big, tmp_path / "big.png", window=(100.0, 200.0))
    media.result_roll_png(big[:-1000], big[-1000:], tmp_path / "result.png")
    assert [(tmp_path / p).read_bytes()[:8] for p in ("small.png", "big.png", "result.png")] == [
        PNG
    ] * 3
    # Axes, ticks, labels, the window's lines and one image: about 120 artists, whatever the
    # number of notes (one bar per note drew 200,000 more).
    assert [_artists(f) < 200 for f in figures] == [True] * 3
    assert [len(f.axes) for f in figures] == [2, 2, 1]  # a window of the piece: overview + zoom
    for ax in (ax for fig in figures for ax in fig.axes):
        assert len(ax.images) == 1 and not ax.patches[1:] and not ax.collections
        rows, cols, _ = ax.images[0].get_array().shape
        assert rows <= C.NUM_PITCHES and cols <= 1000


def test_roll_colours_the_window_and_greys_the_rest(tmp_path, figures):
    # Two notes: pitch 60 in 0..1 s (outside the window), pitch 72 in 2..3 s (inside).
    ids = _two_notes()
    media.prime_roll_png(ids, tmp_path / "roll.png", window=(1.5, 3.0))
    image = figures[0].axes[0].images[0].get_array()
    assert image.shape[0] == 13  # pitches 60..72, one row each
    low, high = image[0], image[-1]  # rows of pitch 60 and 72
    grey = np.round(np.array(media._rgb(media.GREY_LIGHT)) * 255)
    blue = np.round(np.array(media._rgb(media.PRIME_COLOR)) * 255)
    cols = image.shape[1]
    first_third, last_third = slice(cols // 20, cols // 4), slice(2 * cols // 3 + 5, cols - 10)
    assert (low[first_third, 3] > 200).all() and (low[last_third, 3] == 0).all()
    assert (high[last_third, 3] > 200).all() and (high[first_third, 3] == 0).all()
    np.testing.assert_allclose(low[first_third, :3].mean(axis=0), grey, atol=1)
    np.testing.assert_allclose(high[last_third, :3].mean(axis=0), blue, atol=1)
    assert (image[1:-1, :, 3] == 0).all()  # nothing between
    # Below the overview, the window drawn large: only its note, across its whole width.
    zoom = figures[0].axes[1]
    assert zoom.get_xlim() == (1.5, 3.0)
    window_image = zoom.images[0].get_array()
    assert window_image.shape[0] == 1 and tuple(zoom.images[0].get_extent()[:2]) == (1.5, 3.0)
    filled = window_image[0, :, 3] > 0
    assert filled[: int(0.3 * filled.size)].sum() == 0  # 1.5..2 s: silent
    assert filled[int(0.4 * filled.size) :].all()  # 2..3 s: pitch 72 sounds
    np.testing.assert_allclose(window_image[0, -5:, :3].mean(axis=0), blue, atol=1)


def test_roll_draws_call_and_response_answers_in_the_models_colour(tmp_path, figures):
    # Played: pitch 60 in 0..1 s; the model's answer (span 1..3 s): pitch 72 in 2..3 s.
    ids = _two_notes()
    media.prime_roll_png(ids, tmp_path / "roll.png", window=(0.0, 3.0), answers=((1.0, 3.0),))
    media.prime_roll_png(ids, tmp_path / "plain.png", window=(0.0, 3.0))
    colours = []
    for fig in figures:
        image = fig.axes[0].images[0].get_array()
        low, high = image[0], image[-1]  # pitch 60, pitch 72
        colours.append([row[row[:, 3] > 200, :3].mean(axis=0) for row in (low, high)])
    blue = np.round(np.array(media._rgb(media.PRIME_COLOR)) * 255)
    orange = np.round(np.array(media._rgb(media.CONT_COLOR)) * 255)
    np.testing.assert_allclose(colours[0][0], blue, atol=1)  # played
    np.testing.assert_allclose(colours[0][1], orange, atol=1)  # the model's answer
    np.testing.assert_allclose(colours[1][1], blue, atol=1)  # no answers: all the prime's
    texts = [t.get_text().strip() for t in figures[0].axes[0].texts]
    assert texts == ["played", "the model"] and not figures[1].axes[0].texts


def test_short_notes_stay_visible_and_empty_rolls_still_draw(tmp_path, figures):
    # One 10 ms note in a 30-minute piece covers at least one column.
    ids = np.array(
        [C.NOTE_ON_FIRST_ID + 64, C.TIME_SHIFT_FIRST_ID, C.NOTE_OFF_FIRST_ID + 64]
        + [C.TIME_SHIFT_LAST_ID] * 1800,
        np.int32,
    )
    media.prime_roll_png(ids, tmp_path / "short.png")
    assert (figures[0].axes[0].images[0].get_array()[..., 3] > 0).sum() >= 1
    media.prime_roll_png(ids[:0], tmp_path / "empty.png")
    media.result_roll_png(ids[:0], ids[:0], tmp_path / "empty_result.png")
    for name in ("short.png", "empty.png", "empty_result.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert not figures[1].axes[0].images and not figures[2].axes[0].images


def test_roll_png_is_the_figure_size(tmp_path):
    from matplotlib.image import imread

    path = media.result_roll_png(_piece(50)[:100], _piece(50, seed=1), tmp_path / "r.png")
    assert imread(io.BytesIO(path.read_bytes())).shape[:2] == (260, 1000)
