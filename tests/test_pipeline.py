"""The one pipeline (app/core/pipeline.py) with a tiny random model: windows, budgets, seeds,
writers."""

import numpy as np
import pretty_midi
import pytest
import soundfile

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.pipeline import (
    OutputOptions,
    Settings,
    Window,
    _trim_to_seconds,
    context_tokens,
    continue_prime,
    prime_ids,
    write_outputs,
)
from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer import cut_last_tokens, cut_range, decode_notes, encode, music_seconds

EXAMPLE = "examples/bach_prelude_c.mid"
SECONDS = 3.0  # budget 600 tokens: with TOKENS, one compiled length bucket for all app tests
TOKENS = 700


def _notes(ids):
    return {(n.pitch, round(n.start, 2), n.velocity) for n in decode_notes(ids)}


def test_continuation_fills_the_budget_and_starts_after_the_prime(tiny_model, short_prime):
    settings = Settings(seconds=SECONDS, variations=2, seed=5, stop_at_eos=False)
    conts = continue_prime(tiny_model, short_prime, settings)
    assert [c.variation for c in conts] == [1, 2]
    assert [c.seed for c in conts] == [5, 6]
    prime = encode(short_prime)
    for c in conts:
        np.testing.assert_array_equal(c.prime, prime)  # 2 s prime: the whole file is the window
        assert not c.prime_cut
        assert c.stop == "seconds"
        assert c.seconds == pytest.approx(SECONDS, abs=0.01)  # within one 10 ms step
        assert music_seconds(c.ids) == pytest.approx(SECONDS, abs=0.01)
        assert c.tokens == c.ids.size > 0
        assert not np.isin(c.ids, [C.PAD_ID, C.SOS_ID, C.EOS_ID]).any()
        # The full MIDI is the prime then the continuation at the prime's end time.
        full = _notes(c.full_ids)
        prime_end = c.prime_seconds
        assert {n for n in full if n[1] < prime_end} == _notes(prime)
        alone = {(p, round(s + prime_end, 2), v) for p, s, v in _notes(c.continuation_ids())}
        assert {n for n in full if n[1] >= prime_end} == alone
        # The continuation alone starts at time 0 and lasts the budget.
        assert c.midi().get_end_time() <= SECONDS + 1e-6
        assert c.full_midi().get_end_time() <= prime_end + SECONDS + 1e-6
    assert not np.array_equal(conts[0].ids, conts[1].ids)


def test_same_seed_same_notes_and_variation_seeds(tiny_model, short_prime):
    s = Settings(seconds=SECONDS, variations=2, seed=11)
    a = continue_prime(tiny_model, short_prime, s)
    b = continue_prime(tiny_model, short_prime, s)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.ids, y.ids)
    # Variation 2 of seed 11 is variation 1 of seed 12 (the sampler's per-prompt seed rule).
    (single,) = continue_prime(tiny_model, short_prime, s.replace(seed=12, variations=1))
    np.testing.assert_array_equal(single.ids, a[1].ids)


def test_prime_windows_cut_like_the_tokenizer():
    ids = encode(EXAMPLE)
    np.testing.assert_array_equal(
        prime_ids(EXAMPLE, Window.last_tokens(40)), cut_last_tokens(ids, 40)
    )
    np.testing.assert_array_equal(prime_ids(EXAMPLE, Window.range(4, 9)), cut_range(ids, 4, 9))
    np.testing.assert_array_equal(
        prime_ids(EXAMPLE, Window.parse_range("4:9")), cut_range(ids, 4, 9)
    )
    np.testing.assert_array_equal(prime_ids(EXAMPLE, Window.whole()), ids)
    last = prime_ids(EXAMPLE, Window.last_seconds(5))
    assert 4.5 <= music_seconds(last) <= 5.0
    # A range keeps the silence up to its end: the continuation starts at END.
    assert music_seconds(prime_ids(EXAMPLE, Window.range(4, 9))) == pytest.approx(5.0, abs=0.3)
    assert prime_ids(None).size == 0


@pytest.mark.parametrize(
    "source, window, message",
    [
        (EXAMPLE, Window.range(100, 120), "contains no notes"),
        ("no/such.mid", Window(), "no such file"),
        (b"not midi at all", Window(), "not a MIDI file"),
    ],
)
def test_prime_errors_are_one_line(source, window, message):
    with pytest.raises(UserError, match=message) as info:
        prime_ids(source, window)
    assert "\n" not in str(info.value)


def test_prime_without_notes_is_refused(tmp_path):
    pm = pretty_midi.PrettyMIDI()
    pm.instruments.append(pretty_midi.Instrument(0))
    path = tmp_path / "empty.mid"
    pm.write(str(path))
    with pytest.raises(UserError, match="no notes"):
        prime_ids(path)


def test_prime_longer_than_the_context_is_cut_to_what_the_model_sees(tiny_model):
    (c,) = continue_prime(tiny_model, EXAMPLE, Settings(seconds=SECONDS, seed=1))
    assert c.prime_cut
    assert 0 < c.prime.size <= context_tokens(tiny_model)
    window = prime_ids(EXAMPLE, Window())
    np.testing.assert_array_equal(c.prime, cut_last_tokens(window, context_tokens(tiny_model)))


def test_generate_from_sos_and_token_budget(tiny_model):
    (c,) = continue_prime(
        tiny_model, None, Settings(seconds=None, tokens=TOKENS, stop_at_eos=False)
    )
    assert c.prime.size == 0 and c.tokens == TOKENS and c.stop == "tokens"


def test_callback_sees_progress_and_can_stop(tiny_model, short_prime):
    seen = []

    def callback(info):
        seen.append(int(info.num_tokens.max()))
        return True  # stop after the first chunk

    s = Settings(seconds=None, tokens=TOKENS, stop_at_eos=False)
    (c,) = continue_prime(tiny_model, short_prime, s, callback=callback)
    assert len(seen) == 1 and c.stop == "stopped" and 0 < c.tokens < TOKENS


def test_trim_shortens_the_shift_that_crosses_the_budget():
    shift = lambda steps: C.TIME_SHIFT_FIRST_ID + steps - 1  # noqa: E731
    ids = np.array([60, shift(100), 70, shift(80)], np.int32)  # 1.8 s
    trimmed, reached = _trim_to_seconds(ids, 1.5)
    assert reached and music_seconds(trimmed) == pytest.approx(1.5)
    np.testing.assert_array_equal(trimmed[:3], ids[:3])
    same, reached = _trim_to_seconds(ids, 2.0)
    assert not reached and same is ids


def test_velocity_in_force_is_restated_for_the_continuation_alone(tiny_model, short_prime):
    for c in continue_prime(tiny_model, short_prime, Settings(seconds=SECONDS, variations=2)):
        alone = c.continuation_ids()
        assert alone.size in (c.ids.size, c.ids.size + 1)
        on = (alone >= C.NOTE_ON_FIRST_ID) & (alone < C.NOTE_OFF_FIRST_ID)
        if on.any():
            assert (alone[: int(np.argmax(on))] >= C.VELOCITY_FIRST_ID).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seconds": None, "tokens": None}, "budget"),
        ({"seconds": -1}, "seconds"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_k": -1}, "top-k"),
        ({"variations": 0}, "variations"),
        ({"seed": -3}, "seed"),
    ],
)
def test_settings_validation(kwargs, message):
    with pytest.raises(UserError, match=message):
        Settings(**kwargs)


def test_latents_beyond_the_model_are_a_user_error(tiny_model, short_prime):
    with pytest.raises(UserError, match="latents must be in 1..16"):
        continue_prime(tiny_model, short_prime, Settings(seconds=SECONDS, latents=999))


def test_write_outputs_atomic_files(tiny_model, short_prime, tmp_path):
    (c,) = continue_prime(tiny_model, short_prime, Settings(seconds=SECONDS, stop_at_eos=False))
    paths = write_outputs(c, tmp_path, "short", OutputOptions(audio="flac", sample_rate=22050))
    assert paths["midi"] == tmp_path / "short_v1.mid"
    assert paths["audio"] == tmp_path / "short_v1.flac"
    pm = pretty_midi.PrettyMIDI(str(paths["midi"]))
    assert pm.get_end_time() <= SECONDS + 1e-6
    info = soundfile.info(str(paths["audio"]))
    assert info.samplerate == 22050 and info.frames > 0
    full = write_outputs(c, tmp_path / "full", "short", OutputOptions(full=True, audio="none"))
    assert set(full) == {"midi"}
    pm_full = pretty_midi.PrettyMIDI(str(full["midi"]))
    assert pm_full.get_end_time() > pm.get_end_time()
    assert not list(tmp_path.rglob("*.tmp"))


def test_prime_tokens_means_at_most_the_last_tokens_of_the_window():
    ids = encode(EXAMPLE)
    window = Window.range(4, 9).at_most(20)
    np.testing.assert_array_equal(
        prime_ids(EXAMPLE, window), cut_last_tokens(cut_range(ids, 4, 9), 20)
    )
    assert window.describe() == "4 s..9 s, at most its last 20 tokens"
    assert window.to_dict() == {"kind": "range", "start": 4.0, "end": 9.0, "max_tokens": 20}
    assert Window.last_seconds(5).at_most(0) == Window.last_seconds(5)  # 0: all of it
    with pytest.raises(UserError, match="prime tokens must be"):
        Window.range(4, 9).at_most(-3)


def test_full_is_the_piece_up_to_the_window_end_then_the_continuation(tiny_model):
    """One meaning of ``_full`` everywhere: the CLI's --full, batch and the web app's
    ``_full.mid`` (which "Continue from this" continues)."""
    ids = encode(EXAMPLE)
    settings = Settings(tokens=50, seed=3, window=Window.range(4, 9).at_most(30))
    (c,) = continue_prime(tiny_model, EXAMPLE, settings)
    head = cut_range(ids, 0.0, 9.0)
    np.testing.assert_array_equal(c.prime, cut_last_tokens(cut_range(ids, 4, 9), 30))
    np.testing.assert_array_equal(c.full_ids, np.concatenate([head, c.ids]))
    (last,) = continue_prime(tiny_model, EXAMPLE, settings.replace(window=Window.last_seconds(5)))
    np.testing.assert_array_equal(last.full_ids[: ids.size], ids)  # the whole piece, then more


def test_a_request_encodes_its_prime_once(tiny_model, monkeypatch, tmp_path):
    """Counted where every encode reads its MIDI (the tokenizer's own reference to read_midi),
    so a second encode from any module shows."""
    import importlib

    from perceiver_midi.app import generate_cli
    from perceiver_midi.app.cli import main

    encode_module = importlib.import_module("perceiver_midi.tokenizer.encode")  # not the function
    calls = []
    real = encode_module.read_midi

    def counting(source, *args, **kwargs):
        calls.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(encode_module, "read_midi", counting)
    monkeypatch.setattr(generate_cli, "load_model", lambda *a, **k: tiny_model)
    rc = main(["continue", EXAMPLE, "--tokens", "20", "--audio", "none", "--out", str(tmp_path)])
    assert rc == 0 and calls == [EXAMPLE]
