"""Sampler tests: fake-logit models (exact expectations) and a tiny random Perceiver AR."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_midi.model import sampler as sampler_lib
from perceiver_midi.model import vocab
from perceiver_midi.model.config import get_config
from perceiver_midi.model.perceiver_ar import PerceiverAR
from perceiver_midi.model.sampler import StepInfo, StopSampling, sample, sample_with_logits

TINY = get_config("tiny")  # N=64, M=16 -> window 56, fill 8, a reset every 9 tokens
NOTE_FIRST, NOTE_LAST = 3, 130
HALF_SECOND_SHIFT = vocab.TIME_SHIFT_FIRST_ID + 49  # 50 steps = 0.5 s


class _FakeCache(NamedTuple):
    calls: jax.Array  # [B] how many times the model was asked for logits


class RuleModel(nnx.Module):
    """Fake logits: the next token is a fixed function of the newest token.

    * a note id x in [3, 130) -> x + 1 (130 -> 3); ``eos_after`` -> EOS;
    * SOS -> 3; anything else -> 3;
    * ``time_shift=True``: always the 0.5 s TIME_SHIFT.
    The target gets logit 100, a fallback note (``FALLBACK``) logit 50, the rest 0, so sampling at
    any temperature returns the target, or the fallback when the target is banned.
    """

    FALLBACK = 100

    def __init__(self, eos_after: int | None = None, time_shift: bool = False):
        self.config = TINY
        self.eos_after = eos_after
        self.time_shift = time_shift

    def init_cache(self, batch_size, *, num_latents, cross_capacity):
        del num_latents, cross_capacity
        return _FakeCache(calls=jnp.zeros((batch_size,), jnp.int32))

    def encode_prompt(self, cache, tokens_BxT):
        del tokens_BxT
        return cache

    def _logits(self, last_B):
        if self.time_shift:
            target_B = jnp.full_like(last_B, HALF_SECOND_SHIFT)
        else:
            is_note = (last_B >= NOTE_FIRST) & (last_B <= NOTE_LAST)
            target_B = jnp.where(is_note, last_B + 1, NOTE_FIRST)
            target_B = jnp.where(target_B > NOTE_LAST, NOTE_FIRST, target_B)
            if self.eos_after is not None:
                target_B = jnp.where(last_B == self.eos_after, vocab.EOS_ID, target_B)
        logits = jnp.zeros((last_B.shape[0], TINY.vocab_size), jnp.float32)
        logits = logits.at[:, self.FALLBACK].set(50.0)
        return logits.at[jnp.arange(last_B.shape[0]), target_B].set(100.0)

    def refill(self, cache, tokens_BxW, *, fill):
        del fill
        return self._logits(tokens_BxW[:, -1]), cache._replace(calls=cache.calls + 1)

    def decode_step(self, cache, token_B):
        return self._logits(token_B), cache._replace(calls=cache.calls + 1)


def expected_rule_output(prompt, n, eos_after=None):
    last = int(np.concatenate([[vocab.SOS_ID], prompt])[-1])
    out = []
    for _ in range(n):
        if eos_after is not None and last == eos_after:
            break
        last = last + 1 if NOTE_FIRST <= last <= NOTE_LAST else NOTE_FIRST
        last = NOTE_FIRST if last > NOTE_LAST else last
        out.append(last)
    return np.array(out, np.int32)


class ProbModel(RuleModel):
    """Fake logits with a fixed distribution: P(10)=0.5, P(11)=0.3, P(12)=0.2, others ~0."""

    def _logits(self, last_B):
        row = (
            jnp.full((TINY.vocab_size,), -1e9)
            .at[jnp.array([10, 11, 12])]
            .set(jnp.log(jnp.array([0.5, 0.3, 0.2])))
        )
        return jnp.broadcast_to(row, (last_B.shape[0], TINY.vocab_size))


@pytest.fixture(scope="module")
def random_tiny():
    model = PerceiverAR(TINY, rngs=nnx.Rngs(0))
    kernel = model.logits.kernel
    kernel[...] = 0.5 * jax.random.normal(jax.random.key(1), kernel.shape)
    return model


def _prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(vocab.NUM_RESERVED, vocab.VOCAB_SIZE, size=k) for k in lengths]


# ---------------------------------------------------------------------------------------------
# Fake logits: exact outputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_fake_model_outputs_exactly_its_rule(chunk_size):
    prompts = [np.array([], np.int32), np.array([50, 60, 7]), np.arange(3, 103)]  # 100 > N
    outs = sample(RuleModel(), prompts, max_new_tokens=40, chunk_size=chunk_size, temperature=1.0)
    for prompt, out in zip(prompts, outs, strict=True):
        np.testing.assert_array_equal(out, expected_rule_output(prompt, 40))
        assert out.dtype == np.int32


def test_fake_model_greedy_and_top_k_p_agree():
    prompts = [np.array([9]), np.array([130])]
    for kwargs in ({"temperature": 0.0}, {"top_k": 1}, {"top_p": 0.5}, {"top_k": 5, "top_p": 0.9}):
        outs = sample(RuleModel(), prompts, max_new_tokens=20, **kwargs)
        for prompt, out in zip(prompts, outs, strict=True):
            np.testing.assert_array_equal(out, expected_rule_output(prompt, 20))


def test_eos_stops_each_sequence_and_is_not_returned():
    model = RuleModel(eos_after=20)
    prompts = [np.array([10]), np.array([17]), np.array([25])]
    outs = sample(model, prompts, max_new_tokens=30)
    assert [len(o) for o in outs] == [10, 3, 30]  # 11..20 then EOS; 18..20 then EOS; no EOS
    for prompt, out in zip(prompts, outs, strict=True):
        np.testing.assert_array_equal(out, expected_rule_output(prompt, 30, eos_after=20))
        assert vocab.EOS_ID not in out
    # With stop_at_eos=False, EOS is never sampled: the fallback token replaces it.
    out = sample(model, [np.array([19])], max_new_tokens=3, stop_at_eos=False)[0]
    np.testing.assert_array_equal(out, [20, RuleModel.FALLBACK, RuleModel.FALLBACK + 1])


def test_music_time_budget():
    outs = sample(
        RuleModel(time_shift=True),
        [np.array([5]), np.array([])],
        max_new_tokens=50,
        max_seconds=2.0,
    )
    for out in outs:
        np.testing.assert_array_equal(out, [HALF_SECOND_SHIFT] * 4)  # 4 x 0.5 s reaches 2.0 s
    out = sample(RuleModel(time_shift=True), [np.array([5])], max_new_tokens=50, max_seconds=2.2)
    assert len(out[0]) == 5  # 2.5 s: the token that reaches the budget is kept
    # Notes take no time: the token budget stops the note-only model.
    out = sample(RuleModel(), [np.array([5])], max_new_tokens=7, max_seconds=0.1)
    assert len(out[0]) == 7


def test_token_budget_and_trivial_requests():
    out = sample(RuleModel(), [np.array([5]), np.array([6])], max_new_tokens=0)
    assert [len(o) for o in out] == [0, 0]
    assert sample(RuleModel(), [], max_new_tokens=5) == []
    out = sample(RuleModel(), np.array([[5, 6], [7, 8]]), max_new_tokens=3)  # 2-D array input
    np.testing.assert_array_equal(out[1], [9, 10, 11])
    out = sample(RuleModel(), np.array([5, 6]), max_new_tokens=65)  # 1-D array: one prompt
    assert len(out) == 1 and len(out[0]) == 65


def test_top_k_and_top_p_restrict_the_support():
    model = ProbModel()
    prompts = [np.array([5])] * 8

    def drawn(**kwargs):
        outs = sample(model, prompts, max_new_tokens=64, seed=3, **kwargs)
        return set(np.concatenate(outs).tolist())

    assert drawn() == {10, 11, 12}
    assert drawn(top_k=2) == {10, 11}
    assert drawn(top_p=0.6) == {10, 11}  # 0.5 < 0.6, 0.5 + 0.3 >= 0.6
    assert drawn(top_p=0.4) == {10}
    assert drawn(min_p=0.5) == {10, 11}  # 0.3 >= 0.5 x 0.5 > 0.2
    assert drawn(min_p=0.7) == {10}  # 0.3 < 0.7 x 0.5
    assert drawn(min_p=0.35) == {10, 11, 12}  # 0.2 >= 0.35 x 0.5
    assert drawn(min_p=0.5, temperature=3.0) == {10, 11, 12}  # T=3: (0.2/0.5)**(1/3) = 0.74
    assert drawn(temperature=0.0) == {10}
    counts = np.bincount(np.concatenate(sample(model, prompts, max_new_tokens=64)), minlength=13)
    assert counts[10] > counts[11] > counts[12] > 0  # follows the 0.5 / 0.3 / 0.2 distribution


def test_callback_progress_and_early_stop():
    infos: list[StepInfo] = []

    def record(info):
        infos.append(info)

    prompts = [np.array([5]), np.array([100])]
    full = sample(RuleModel(), prompts, max_new_tokens=20, callback=record, chunk_size=6)
    assert [i.step for i in infos] == [6, 12, 18, 20]
    assert infos[-1].max_new_tokens == 20
    np.testing.assert_array_equal(infos[1].num_tokens, [12, 12])
    np.testing.assert_array_equal(infos[1].tokens[0], full[0][:12])
    assert not infos[-1].done.any()

    def stop_after_first(info):
        return True

    outs = sample(RuleModel(), prompts, max_new_tokens=20, callback=stop_after_first, chunk_size=6)
    for out, ref in zip(outs, full, strict=True):
        np.testing.assert_array_equal(out, ref[:6])

    def raise_stop(info):
        if info.step >= 12:
            raise StopSampling

    outs = sample(RuleModel(), prompts, max_new_tokens=20, callback=raise_stop, chunk_size=6)
    assert [len(o) for o in outs] == [12, 12]


def test_invalid_requests_raise_clear_errors():
    model = RuleModel()
    with pytest.raises(ValueError, match="PAD"):
        sample(model, [np.array([5, 0, 6])], max_new_tokens=2)
    with pytest.raises(ValueError, match="outside"):
        sample(model, [np.array([391])], max_new_tokens=2)
    with pytest.raises(ValueError, match="num_latents"):
        sample(model, [np.array([5])], max_new_tokens=2, num_latents=TINY.num_latents + 1)
    with pytest.raises(ValueError, match="top_p"):
        sample(model, [np.array([5])], max_new_tokens=2, top_p=0.0)
    with pytest.raises(ValueError, match="min_p"):
        sample(model, [np.array([5])], max_new_tokens=2, min_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sample(model, [np.array([5])], max_new_tokens=-1)
    with pytest.raises(ValueError, match="seeds"):
        sample(model, [np.array([5])], max_new_tokens=2, seed=[1, 2])
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_note_seconds"):
            sample(model, [np.array([5])], max_new_tokens=2, max_note_seconds=bad)


# ---------------------------------------------------------------------------------------------
# Tiny random Perceiver AR
# ---------------------------------------------------------------------------------------------


def test_batch_equals_single_runs(random_tiny):
    prompts = _prompts([3, 30, 90])
    kwargs = {"max_new_tokens": 30, "temperature": 1.0, "top_p": 0.95, "stop_at_eos": False}
    batch = sample(random_tiny, prompts, seed=11, **kwargs)
    for i, prompt in enumerate(prompts):
        single = sample(random_tiny, [prompt], seed=11 + i, **kwargs)[0]
        np.testing.assert_array_equal(batch[i], single)
    # Explicit per-prompt seeds and a different batch composition give the same rows.
    again = sample(random_tiny, [prompts[2], prompts[0]], seed=[13, 11], **kwargs)
    np.testing.assert_array_equal(again[0], batch[2])
    np.testing.assert_array_equal(again[1], batch[0])


def test_same_seed_same_ids_and_chunking_does_not_matter(random_tiny):
    prompts = _prompts([5, 20])
    kwargs = {"max_new_tokens": 30, "stop_at_eos": False}
    a = sample(random_tiny, prompts, seed=4, **kwargs)
    b = sample(random_tiny, prompts, seed=4, chunk_size=7, **kwargs)
    c = sample(random_tiny, prompts, seed=5, **kwargs)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c, strict=True))
    assert all(len(x) == 30 for x in a)
    assert all(vocab.PAD_ID not in x and vocab.SOS_ID not in x for x in a)


def test_top_k_1_equals_greedy(random_tiny):
    prompts = _prompts([4, 40])
    greedy = sample(random_tiny, prompts, max_new_tokens=30, temperature=0.0, stop_at_eos=False)
    top1 = sample(random_tiny, prompts, max_new_tokens=30, top_k=1, seed=9, stop_at_eos=False)
    for g, t in zip(greedy, top1, strict=True):
        np.testing.assert_array_equal(g, t)


def test_uncached_sampling_is_a_full_forward_per_token(random_tiny):
    prompts = _prompts([10])
    outs, logits, plan = sample_with_logits(
        random_tiny,
        prompts,
        max_new_tokens=6,
        use_cache=False,
        temperature=0.0,
        stop_at_eos=False,
        sounding_note_offs=False,  # the raw model's argmax
    )
    n = TINY.max_len
    assert plan.window == n and plan.period == 1
    seq = np.concatenate([np.zeros(n - 11, np.int64), [vocab.SOS_ID], prompts[0], outs[0]])
    forward = nnx.jit(lambda m, t: m(t)[:, -1])
    for g in range(6):
        full = forward(random_tiny, jnp.asarray(seq[g : g + n])[None])[0]
        np.testing.assert_allclose(np.asarray(full), logits[0, g], atol=1e-4)
        assert int(jnp.argmax(full)) == outs[0][g]


def test_fewer_latents_at_sampling_time(random_tiny):
    outs = sample(random_tiny, _prompts([8, 12]), max_new_tokens=20, num_latents=4)
    assert all(0 < len(o) <= 20 for o in outs)


def test_one_compilation_per_shape_bucket(random_tiny):
    kwargs = {"max_new_tokens": 20, "stop_at_eos": False}
    sample(random_tiny, _prompts([3, 5, 7]), **kwargs)  # batch bucket 4, token bucket 64
    before = sampler_lib._run_chunk._cache_size()
    sample(random_tiny, _prompts([9, 2, 4, 60]), seed=3, temperature=0.7, top_k=5, **kwargs)
    sample(
        random_tiny,
        _prompts([1, 2, 3]),
        max_new_tokens=50,
        top_p=0.8,
        chunk_size=16,
        max_seconds=3.0,
    )
    sample(random_tiny, _prompts([4, 8, 5]), max_note_seconds=0.5, **kwargs)
    sample(random_tiny, _prompts([6, 2, 9]), max_note_seconds=7.0, **kwargs)
    assert sampler_lib._run_chunk._cache_size() == before


def test_length_bucket_shares_one_program_and_changes_no_ids(random_tiny):
    """A server compiles once for its longest budget; shorter requests run that program and
    sample exactly the ids of their own (smaller) bucket."""
    prompts = _prompts([4, 9])
    kwargs = {"seed": 11, "stop_at_eos": False}
    own = sample(random_tiny, prompts, max_new_tokens=40, **kwargs)  # bucket 64
    sample(random_tiny, prompts, max_new_tokens=300, **kwargs)  # bucket 512: compiled here
    before = sampler_lib._run_chunk._cache_size()
    shared = sample(random_tiny, prompts, max_new_tokens=40, length_bucket=300, **kwargs)
    assert sampler_lib._run_chunk._cache_size() == before
    for x, y in zip(own, shared, strict=True):
        np.testing.assert_array_equal(x, y)


# -- NOTE_OFF only for sounding pitches -----------------------------------------------------------

ON, OFF = vocab.NOTE_ON_FIRST_ID, vocab.NOTE_OFF_FIRST_ID


@pytest.mark.parametrize(
    "ids, sounding",
    [
        ([], {}),
        ([ON + 60], {60: 1}),
        ([ON + 60, OFF + 60], {}),
        ([ON + 60, ON + 60, OFF + 60], {60: 1}),  # two notes of one pitch, one ended
        ([OFF + 60, ON + 64, 300, OFF + 61], {64: 1}),  # unmatched NOTE_OFFs change nothing
        ([2, 370, ON + 0, ON + 127, 259], {0: 1, 127: 1}),
    ],
)
def test_sounding_pitches_table(ids, sounding):
    expected = np.zeros(128, np.int32)
    for p, n in sounding.items():
        expected[p] = n
    np.testing.assert_array_equal(sampler_lib.sounding_pitches(np.array(ids, np.int64)), expected)


def test_end_sounding_keeps_note_off_mass_and_moves_it_to_sounding_pitches():
    rng = np.random.default_rng(0)
    logits_BxV = jnp.asarray(rng.normal(size=(3, vocab.VOCAB_SIZE)) * 2, jnp.float32)
    sounding_BxP = np.zeros((3, 128), np.int32)
    sounding_BxP[0, [60, 64]] = 1
    sounding_BxP[1, 10] = 2
    out = sampler_lib.end_sounding_only(logits_BxV, jnp.asarray(sounding_BxP))
    p_in = np.asarray(jax.nn.softmax(logits_BxV, axis=-1))
    p_out = np.asarray(jax.nn.softmax(out, axis=-1))
    offs = slice(OFF, OFF + 128)
    for b in (0, 1):  # something sounds: NOTE_OFF total kept, the rest untouched
        np.testing.assert_allclose(p_out[b, offs].sum(), p_in[b, offs].sum(), rtol=1e-5)
        assert np.all(p_out[b, offs][sounding_BxP[b] == 0] == 0)
        keep = np.ones(vocab.VOCAB_SIZE, bool)
        keep[offs] = False
        np.testing.assert_allclose(p_out[b, keep], p_in[b, keep], rtol=1e-5)
        on = np.nonzero(sounding_BxP[b])[0]  # shared in the model's proportions
        ratio = p_out[b, OFF + on] / p_in[b, OFF + on]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
    assert np.all(p_out[2, offs] == 0)  # nothing sounds: no NOTE_OFF, the rest renormalised
    np.testing.assert_allclose(p_out[2].sum(), 1.0, rtol=1e-5)


class PreferSilentOff(RuleModel):
    """Fake logits: NOTE_ON 60 first, then overwhelmingly a NOTE_OFF of silent pitch 61, a little
    mass on the NOTE_OFF of 60, and the 0.5 s shift as the only other choice."""

    def _logits(self, last_B):
        b = last_B.shape[0]
        logits = jnp.full((b, TINY.vocab_size), -1e9, jnp.float32)
        first = last_B == vocab.SOS_ID
        logits = logits.at[:, ON + 60].set(jnp.where(first, 100.0, -1e9))
        logits = logits.at[:, OFF + 61].set(jnp.where(first, -1e9, 10.0))
        logits = logits.at[:, OFF + 60].set(jnp.where(first, -1e9, 0.0))
        return logits.at[:, HALF_SECOND_SHIFT].set(jnp.where(first, -1e9, 9.0))


def test_silent_note_offs_are_never_sampled_and_their_mass_ends_sounding_notes():
    prompts = [np.zeros(0, np.int32)] * 8
    outs = sample(PreferSilentOff(), prompts, max_new_tokens=6, seed=3, stop_at_eos=False)
    for out in outs:
        # NOTE_ON 60, then NOTE_OFF 60 (it got the silent pitch's mass: p ~ 0.73 vs the shift's
        # 0.27), and once 60 is off no NOTE_OFF is possible: only shifts follow.
        assert out[0] == ON + 60 and OFF + 61 not in out
        assert set(out[1:].tolist()) <= {OFF + 60, HALF_SECOND_SHIFT}
        assert (out == OFF + 60).sum() <= 1
    assert sum(int(out[1] == OFF + 60) for out in outs) >= 4
    raw = sample(
        PreferSilentOff(),
        prompts,
        max_new_tokens=6,
        seed=3,
        stop_at_eos=False,
        sounding_note_offs=False,
    )
    assert sum(int((out == OFF + 61).sum()) for out in raw) >= 20  # raw: ~29 of 40 are no-ops


def test_prompt_notes_count_as_sounding():
    """A note opened in the prompt can be ended; with no note open nothing can be."""
    prompt = np.array([ON + 60], np.int32)
    outs = sample(PreferSilentOff(), [prompt], max_new_tokens=4, seed=0, stop_at_eos=False)
    assert OFF + 61 not in outs[0]


def test_random_model_never_ends_a_silent_note(random_tiny):
    prompts = _prompts([4, 40, 56])
    outs = sample(random_tiny, prompts, max_new_tokens=120, seed=1, stop_at_eos=False)
    n_offs = 0
    for prompt, out in zip(prompts, outs, strict=True):
        counts = sampler_lib.sounding_pitches(prompt)
        for tok in out.tolist():
            if OFF <= tok < OFF + 128:
                assert counts[tok - OFF] > 0
                counts[tok - OFF] -= 1
                n_offs += 1
            elif ON <= tok < ON + 128:
                counts[tok - ON] += 1
    assert n_offs > 5


# -- the longest note (max_note_seconds) ----------------------------------------------------------

SECOND_SHIFT = vocab.TIME_SHIFT_LAST_ID  # 100 steps = 1 s


class NeverEnds(RuleModel):
    """Fake logits that never want a note to end: after a NOTE_ON the 0.5 s shift, after anything
    else a NOTE_ON of pitch 40 + (model calls % 48) (``restrike``: always pitch 60, so its notes
    pile up); every NOTE_OFF has logit 0 against 100, the rest -1e9. Without a limit every note
    sounds to the end."""

    def __init__(self, restrike: bool = False):
        super().__init__()
        self.restrike = restrike

    def _next(self, cache, last_B):
        b = last_B.shape[0]
        is_on_B = (last_B >= ON) & (last_B < ON + 128)
        pitch_B = 60 + 0 * cache.calls if self.restrike else 40 + cache.calls % 48
        target_B = jnp.where(is_on_B, HALF_SECOND_SHIFT, ON + pitch_B)
        logits = jnp.full((b, TINY.vocab_size), -1e9, jnp.float32)
        logits = logits.at[:, OFF : OFF + 128].set(0.0)
        return logits.at[jnp.arange(b), target_B].set(100.0)

    def refill(self, cache, tokens_BxW, *, fill):
        del fill
        return self._next(cache, tokens_BxW[:, -1]), cache._replace(calls=cache.calls + 1)

    def decode_step(self, cache, token_B):
        return self._next(cache, token_B), cache._replace(calls=cache.calls + 1)


def _durations(ids):
    from perceiver_midi.tokenizer import decode_notes

    return np.array([n.end - n.start for n in decode_notes(np.asarray(ids))])


@pytest.mark.parametrize("limit", [2.0, 3.3])
@pytest.mark.parametrize("restrike", [False, True])
def test_max_note_seconds_ends_every_note_in_time(limit, restrike):
    """Also when one pitch is struck again and again while its notes sound (decoding ends the
    oldest first: each note's own onset counts)."""
    prompts = [np.zeros(0, np.int32), np.array([ON + 30], np.int32)]
    kwargs = {"max_new_tokens": 200, "max_seconds": 20.0, "stop_at_eos": False, "seed": 1}
    free = sample(NeverEnds(restrike), prompts, **kwargs)
    held = sample(NeverEnds(restrike), prompts, max_note_seconds=limit, **kwargs)
    for prompt, f, h in zip(prompts, free, held, strict=True):
        assert not np.isin(f, np.arange(OFF, OFF + 128)).any()  # the model alone ends nothing
        assert _durations(np.concatenate([prompt, f])).max() >= 19.5  # its notes run to the end
        d = _durations(np.concatenate([prompt, h]))
        assert d.max() <= limit + 0.5 + 1e-9  # the limit plus at most one (0.5 s) shift
        assert (d >= limit - 1e-9).sum() >= 10  # ended by the limit, not by the model


def test_max_note_seconds_off_is_bit_identical(random_tiny):
    prompts = _prompts([4, 40, 90])
    kwargs = {"max_new_tokens": 150, "seed": 7, "stop_at_eos": False, "top_p": 0.95}
    default = sample(random_tiny, prompts, **kwargs)
    for limit in (None, 1e5):  # off, and a limit no note reaches: the same ids
        outs = sample(random_tiny, prompts, max_note_seconds=limit, **kwargs)
        for x, y in zip(default, outs, strict=True):
            np.testing.assert_array_equal(x, y)
    short = sample(random_tiny, prompts, max_note_seconds=0.3, **kwargs)
    assert any(not np.array_equal(x, y) for x, y in zip(default, short, strict=True))


def test_max_note_seconds_holds_on_every_token(random_tiny):
    """Wherever a sounding note (prompt or generated) has reached the limit, the next token is
    the NOTE_OFF of such a note; the loop's running onsets match ``sounding_onsets``."""
    limit_steps = 40  # 0.4 s
    prompts = _prompts([4, 40, 90], seed=3)
    outs = sample(
        random_tiny, prompts, max_new_tokens=150, seed=2, stop_at_eos=False, max_note_seconds=0.4
    )
    forced = 0
    for prompt, out in zip(prompts, outs, strict=True):
        for k, tok in enumerate(out.tolist()):
            seq = np.concatenate([prompt, out[:k]])
            counts = sampler_lib.sounding_pitches(seq)
            onset = sampler_lib.sounding_onsets(seq)
            old = np.nonzero((counts > 0) & (-onset >= limit_steps))[0]
            if old.size:
                forced += 1
                assert tok - OFF in old.tolist()
    assert forced > 5


def test_max_note_seconds_counts_prompt_notes():
    """A prompt note that started 3 s before the prompt's end (outside the model's window of 56
    tokens) ends first with a 2 s limit; one that started 1 s before does not."""
    filler = [ON + 70, OFF + 70] * 40
    old = np.array([ON + 60, SECOND_SHIFT, SECOND_SHIFT, SECOND_SHIFT, *filler], np.int32)
    young = np.array([ON + 60, SECOND_SHIFT, *filler], np.int32)
    two_old = np.array([ON + 60, ON + 64, SECOND_SHIFT, SECOND_SHIFT, ON + 50], np.int32)
    outs = sample(NeverEnds(), [old, young, two_old], max_new_tokens=8, max_note_seconds=2.0)
    assert outs[0][0] == OFF + 60
    assert OFF + 60 not in outs[1][:2] and outs[1][0] != OFF + 60
    assert sorted(outs[2][:2].tolist()) == [OFF + 60, OFF + 64]  # both, before anything else
    assert outs[2][2] != OFF + 50  # the young note is not ended


def test_end_overlong_notes_keeps_note_off_proportions():
    rng = np.random.default_rng(1)
    logits_BxV = jnp.asarray(rng.normal(size=(2, vocab.VOCAB_SIZE)) * 2, jnp.float32)
    overlong_BxP = np.zeros((2, 128), bool)
    overlong_BxP[0, [60, 64, 67]] = True
    out = np.asarray(sampler_lib.end_overlong_notes(logits_BxV, jnp.asarray(overlong_BxP)))
    np.testing.assert_array_equal(out[1], np.asarray(logits_BxV[1]))  # no over-long note
    p_in = np.asarray(jax.nn.softmax(logits_BxV[0]))
    p_out = np.asarray(jax.nn.softmax(out[0]))
    keep = OFF + np.array([60, 64, 67])
    assert np.all(np.delete(p_out, keep) == 0)
    np.testing.assert_allclose(p_out[keep], p_in[keep] / p_in[keep].sum(), rtol=1e-5)
    greedy = sample(NeverEnds(), [np.array([ON + 60, SECOND_SHIFT, SECOND_SHIFT])],
                    max_new_tokens=1, temperature=0.0, max_note_seconds=1.0)  # fmt: skip
    assert greedy[0][0] == OFF + 60


@pytest.mark.parametrize(
    "ids, onsets",
    [
        ([], {}),
        ([ON + 60], {60: 0}),
        ([ON + 60, SECOND_SHIFT], {60: -100}),
        ([ON + 60, SECOND_SHIFT, ON + 64, 308], {60: -150, 64: -50}),
        ([ON + 60, SECOND_SHIFT, OFF + 60], {}),  # ended: silent
        ([ON + 60, SECOND_SHIFT, ON + 60, 308], {60: -150}),  # two notes of one pitch: the oldest
        # three notes of one pitch, the oldest ended: the second's onset
        (
            [ON + 60, SECOND_SHIFT, ON + 60, SECOND_SHIFT, ON + 60, SECOND_SHIFT, OFF + 60, 308],
            {60: -250},
        ),  # fmt: skip
        ([OFF + 60, SECOND_SHIFT, ON + 60, 259], {60: -1}),  # an unmatched NOTE_OFF
        ([2, 370, ON + 0, ON + 127, 259, 260], {0: -3, 127: -3}),
        # 20 notes of one pitch 1 step apart, 5 ended: the 6th is the oldest (past the queue's
        # 16 slots the newest slot stands for the newest notes)
        ([*[ON + 60, 259] * 20, *[OFF + 60] * 5], {60: -(20 - 5)}),
    ],
)
def test_sounding_onsets_table(ids, onsets):
    expected = np.zeros(128, np.int32)
    for p, onset in onsets.items():
        expected[p] = onset
    got = sampler_lib.sounding_onsets(np.array(ids, np.int64))
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32


def test_sounding_onsets_is_the_oldest_open_note_as_decoding_pairs_them():
    """Random NOTE_ON/OFF/shift streams over three pitches against a plain FIFO per pitch, also
    past the queue's slots (there the onset is never earlier than the true one)."""
    from collections import deque

    rng = np.random.default_rng(5)
    for trial in range(60):
        stack = trial % 2 == 1  # odd trials: mostly NOTE_ONs, so notes of a pitch pile up
        p_on = 0.55 if stack else 0.35
        choice = rng.choice(3, size=300, p=[p_on, 0.65 - p_on, 0.35])
        pitch = rng.choice([40, 41, 90], size=300)
        ids = np.where(choice == 0, ON + pitch, np.where(choice == 1, OFF + pitch, 0))
        ids = np.where(choice == 2, rng.integers(259, 359, size=300), ids)
        queues, t = {p: deque() for p in (40, 41, 90)}, 0
        deepest = 0
        for tok in ids.tolist():
            if tok >= vocab.TIME_SHIFT_FIRST_ID:
                t += tok - vocab.TIME_SHIFT_FIRST_ID + 1
            elif tok >= OFF:
                if queues[tok - OFF]:
                    queues[tok - OFF].popleft()
            else:
                queues[tok - ON].append(t)
                deepest = max(deepest, len(queues[tok - ON]))
        got = sampler_lib.sounding_onsets(ids)
        for p, q in queues.items():
            true = q[0] - t if q else 0
            if deepest <= sampler_lib.ONSET_SLOTS:
                assert got[p] == true
            else:
                assert got[p] >= true


# ---------------------------------------------------------------------------------------------
# Context guidance: full + guidance * (full - short)
# ---------------------------------------------------------------------------------------------

MARK, A_ID, B_ID = 200, 40, 41


class _MarkCache(NamedTuple):
    seen: jax.Array  # [B] bool: the row's inputs so far hold MARK


class MarkModel(RuleModel):
    """Fake logits that depend on the far past: A gets 1.0 (1.4 once MARK is among the row's
    inputs), B 1.5, the rest -20. Unguided greedy plays B; a row that saw MARK, guided by a row
    that did not (weight g), gives A 1.4 + 0.4 g: A for g > 0.25."""

    def init_cache(self, batch_size, *, num_latents, cross_capacity):
        del num_latents, cross_capacity
        return _MarkCache(seen=jnp.zeros((batch_size,), bool))

    def encode_prompt(self, cache, tokens_BxT):
        return _MarkCache(seen=cache.seen | jnp.any(tokens_BxT == MARK, axis=1))

    def _mark_logits(self, seen_B):
        logits = jnp.full((seen_B.shape[0], TINY.vocab_size), -20.0)
        logits = logits.at[:, B_ID].set(1.5)
        return logits.at[:, A_ID].set(jnp.where(seen_B, 1.4, 1.0))

    def refill(self, cache, tokens_BxW, *, fill):
        del fill
        cache = _MarkCache(seen=cache.seen | jnp.any(tokens_BxW == MARK, axis=1))
        return self._mark_logits(cache.seen), cache

    def decode_step(self, cache, token_B):
        cache = _MarkCache(seen=cache.seen | (token_B == MARK))
        return self._mark_logits(cache.seen), cache


@pytest.mark.parametrize(
    ("guidance", "guidance_tokens", "expected"),
    [
        (0.0, 4, B_ID),  # off
        (1.0, 4, A_ID),  # the short rows (SOS + 4 tokens) miss MARK: 1.8 against 1.5
        (0.2, 4, B_ID),  # 1.48 against 1.5
        (1.0, 40, B_ID),  # the short rows see MARK too: nothing to amplify
        (1.0, 0, A_ID),  # SOS alone
    ],
)
def test_guidance_amplifies_what_the_far_past_changes(guidance, guidance_tokens, expected):
    prompts = [np.array([MARK] + [10] * 20), np.array([11] * 30)]  # only the first holds MARK
    outs = sample(MarkModel(), prompts, max_new_tokens=12, temperature=0.0,
                  guidance=guidance, guidance_tokens=guidance_tokens)  # fmt: skip
    np.testing.assert_array_equal(outs[0], np.full(12, expected))
    np.testing.assert_array_equal(outs[1], np.full(12, B_ID))  # no MARK: full == short


def test_guided_logits_table():
    full = jnp.array([[0.0, 1.0, -1.0]])
    short = jnp.array([[0.5, 1.0, -3.0]])
    np.testing.assert_allclose(
        sampler_lib.guided_logits(full, short, jnp.float32(2.0)), [[-1.0, 1.0, 3.0]]
    )


def test_guided_rows_that_see_the_whole_prompt_sample_as_unguided(random_tiny):
    """Each prompt's short row holds the whole prompt: the guided draws (same seeds, a batch of
    twice the rows) are the unguided ones; with a short context they differ, and a batch run
    still equals single runs."""
    prompts = _prompts([3, 30, 45])
    kwargs = {"max_new_tokens": 40, "stop_at_eos": False, "top_p": 0.95, "seed": 5}
    plain = sample(random_tiny, prompts, **kwargs)
    whole = sample(random_tiny, prompts, guidance=1.5, guidance_tokens=100, **kwargs)
    short = sample(random_tiny, prompts, guidance=1.5, guidance_tokens=8, **kwargs)
    for p, w in zip(plain, whole, strict=True):
        np.testing.assert_array_equal(p, w)
    assert not np.array_equal(plain[2], short[2])
    for i, prompt in enumerate(prompts):
        single = sample(random_tiny, [prompt], guidance=1.5, guidance_tokens=8,
                        **{**kwargs, "seed": 5 + i})  # fmt: skip
        np.testing.assert_array_equal(single[0], short[i])


def test_guidance_bounds():
    for bad in (-0.5, sampler_lib.MAX_GUIDANCE + 1):
        with pytest.raises(ValueError, match="guidance must be in"):
            sampler_lib.SampleOptions(max_new_tokens=4, guidance=bad)
    with pytest.raises(ValueError, match="guidance_tokens"):
        sampler_lib.SampleOptions(max_new_tokens=4, guidance=1.0, guidance_tokens=-1)


# -- the longest run on two pitches (max_pitch_run) ----------------------------------------------


def _trailing_run(pitches) -> int:
    """Brute force: the longest suffix of ``pitches`` on at most two distinct pitches."""
    best = 0
    for k in range(1, len(pitches) + 1):
        if len(set(pitches[-k:])) <= 2:
            best = k
    return best


@pytest.mark.parametrize("seed", range(5))
def test_pitch_run_state_is_the_longest_trailing_run_on_two_pitches(seed):
    rng = np.random.default_rng(seed)
    pitches = rng.choice([60, 62, 64], size=60, p=[0.5, 0.4, 0.1]).tolist()
    run = sampler_lib.PITCH_RUN_NONE
    for k, p in enumerate(pitches):
        run = sampler_lib.next_run(run, p)
        assert run[0] == p and run[2] == _trailing_run(pitches[: k + 1])
    ids = np.array([t for p in pitches for t in (ON + p, HALF_SECOND_SHIFT, OFF + p)], np.int32)
    np.testing.assert_array_equal(sampler_lib.pitch_run(ids), run)  # NOTE_OFFs and shifts: none


class Trill(RuleModel):
    """Fake logits: a trill, NOTE_ON 62 after NOTE_ON 60 and 60 after anything else (logit
    100); every other NOTE_ON 10, everything else -1e9. Stuck on two pitches for ever."""

    def _logits(self, last_B):
        b = last_B.shape[0]
        target_B = jnp.where(last_B == ON + 60, ON + 62, ON + 60)
        logits = jnp.full((b, TINY.vocab_size), -1e9, jnp.float32)
        logits = logits.at[:, ON : ON + 128].set(10.0)
        return logits.at[jnp.arange(b), target_B].set(100.0)


@pytest.mark.parametrize("guidance", [0.0, 0.5])
@pytest.mark.parametrize("limit", [2, 9])
def test_max_pitch_run_breaks_a_stuck_trill(limit, guidance):
    trill = [ON + 60, ON + 62] * 10  # the prompt already trills for 20 notes
    prompts = [np.zeros(0, np.int32), np.array(trill, np.int32)]
    kw = {"max_new_tokens": 60, "seed": 3, "stop_at_eos": False, "guidance": guidance}
    free = sample(Trill(), prompts, **kw)
    held = sample(Trill(), prompts, max_pitch_run=limit, **kw)
    for prompt, f, h in zip(prompts, free, held, strict=True):
        assert set(f.tolist()) == {ON + 60, ON + 62}  # the model alone never leaves the trill
        pitches = [t - ON for t in np.concatenate([prompt, h]).tolist()]
        runs = [_trailing_run(pitches[: k + 1]) for k in range(len(prompt), len(pitches))]
        assert max(runs) <= limit  # every generated note keeps the run within the limit
        assert sum(p not in (60, 62) for p in pitches[len(prompt) :]) >= 60 // (limit + 1)
    assert held[1][0] - ON not in (60, 62)  # the prompt's own run counts


def test_max_pitch_run_off_is_bit_identical(random_tiny):
    prompts = _prompts([4, 40, 90])
    kwargs = {"max_new_tokens": 150, "seed": 7, "stop_at_eos": False, "top_p": 0.95}
    default = sample(random_tiny, prompts, **kwargs)
    for limit in (None, 10**6):
        outs = sample(random_tiny, prompts, max_pitch_run=limit, **kwargs)
        for x, y in zip(default, outs, strict=True):
            np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="max_pitch_run"):
        sampler_lib.SampleOptions(max_new_tokens=4, max_pitch_run=1)


def test_max_pitch_run_yields_to_the_controls():
    """With only the run's two pitches allowed, the notes go on (no silence for ever)."""
    out = sample(
        Trill(), [np.zeros(0, np.int32)], max_new_tokens=40, seed=0, stop_at_eos=False,
        max_pitch_run=4, allowed_pitches=(60, 62),
    )[0]  # fmt: skip
    assert out.size == 40 and set(out.tolist()) == {ON + 60, ON + 62}
