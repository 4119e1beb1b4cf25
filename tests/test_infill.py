"""Infilling: the prompt layout (tables of ids), training crops, sentinels in the model and loss."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_midi.model import infill
from perceiver_midi.model.checkpoint import grow_params, param_specs, params_mismatch
from perceiver_midi.model.config import get_config
from perceiver_midi.model.data import NO_AUGMENTATION, Infill, TrainBatches
from perceiver_midi.model.losses import loss_fn
from perceiver_midi.model.match import coarse
from perceiver_midi.model.perceiver_ar import (
    RESERVED_KIND,
    PerceiverAR,
    event_kind,
    noise_inputs,
)
from perceiver_midi.model.vocab import (
    FIM_GAP_ID,
    FIM_MIDDLE_ID,
    FIM_PREFIX_ID,
    FIM_SUFFIX_ID,
    INPUT_VOCAB_SIZE,
    PAD_ID,
    SOS_ID,
    VOCAB_SIZE,
)
from perceiver_midi.tokenizer.dataset import TokenSplit

ON, OFF, TS, VEL = 3, 131, 259, 359  # first ids of each kind
GAP, SUF, PRE, MID = FIM_GAP_ID, FIM_SUFFIX_ID, FIM_PREFIX_ID, FIM_MIDDLE_ID


def ts(steps):
    return TS + steps - 1


# A tiny piece: times (10 ms steps) of each token's event in the comment.
PIECE = np.array(
    [
        VEL + 20,  # 0
        ON + 60,  # 0
        ts(50),  # 0 -> 50
        ON + 64,  # 50
        ts(100),  # 50 -> 150
        OFF + 60,  # 150
        ON + 67,  # 150
        ts(30),  # 150 -> 180
        OFF + 64,  # 180
        OFF + 67,  # 180
        ts(20),  # 180 -> 200
        ON + 72,  # 200
    ]
)


@pytest.mark.parametrize(
    "start, end, a, b, steps",
    [
        (0, 50, 0, 3, 50),  # from the first event
        (10, 60, 3, 5, 100),  # each edge moves to the next event
        (50, 150, 3, 5, 100),  # edges on events stay
        (150, 200, 5, 11, 50),
        (160, 300, 8, 12, 20),  # past the end: the gap ends with the piece
        (190, 195, 11, 11, 0),  # no event inside: empty
    ],
)
def test_span_table(start, end, a, b, steps):
    assert infill.span(PIECE, start, end) == (a, b)
    assert infill.gap_steps(PIECE, a, b) == steps
    np.testing.assert_array_equal(infill.time_before(PIECE)[[0, 3, 5, 12]], [0, 50, 150, 200])


@pytest.mark.parametrize(
    "steps, ids",
    [(1, [ts(1)]), (100, [ts(100)]), (250, [ts(100), ts(100), ts(50)]), (300, [ts(100)] * 3)],
)
def test_gap_shift_ids_table(steps, ids):
    assert infill.gap_shift_ids(steps) == ids
    with pytest.raises(ValueError, match="at least 10 ms"):
        infill.gap_shift_ids(0)


def test_prompt_layout_and_truncation():
    prefix, suffix = np.arange(10, 20), np.arange(30, 40)
    p = infill.prompt(prefix, suffix, 150, 100)
    expect = [SOS_ID, GAP, ts(100), ts(50), SUF, *range(30, 40), PRE, *range(10, 20), MID]
    assert p.tolist() == expect
    # 14 tokens: the header (5), PREFIX, MIDDLE and 7 more: the suffix gets half of them
    assert infill.prompt(prefix, suffix, 150, 14).tolist() == [
        SOS_ID, GAP, ts(100), ts(50), SUF, 30, 31, 32, PRE, 16, 17, 18, 19, MID
    ]  # fmt: skip
    # the suffix keeps its start, the prefix its end
    p = infill.prompt(prefix, suffix[:2], 150, 14)
    assert p.tolist() == [SOS_ID, GAP, ts(100), ts(50), SUF, 30, 31, PRE, 15, 16, 17, 18, 19, MID]
    with pytest.raises(ValueError, match="more than 5"):
        infill.prompt(prefix, suffix, 150, 5)
    long_suffix = np.full(infill.MAX_SUFFIX_TOKENS + 50, 40)
    p = infill.prompt(prefix, long_suffix, 150, 5000)
    assert np.sum(p == 40) == infill.MAX_SUFFIX_TOKENS


def test_music_before_middle():
    p = infill.prompt(np.array([ON + 60]), np.array([ON + 70]), 50, 100)
    assert infill.music_before_middle(p).tolist() == [ON + 60, MID]
    assert infill.music_before_middle(np.array([ON + 1, ON + 2])).tolist() == [ON + 1, ON + 2]
    one = infill.Layout(1)
    p = infill.prompt(np.array([ON + 60]), np.array([ON + 70, ts(3)]), 50, 100, one)
    assert infill.music_before_middle(np.concatenate([p, [ON + 61]])).tolist() == [
        ON + 60, MID, ON + 61
    ]  # fmt: skip
    tail = infill.Layout(1, 2)
    p = infill.prompt(np.array([ON + 60, ts(1), ON + 62]), np.array([ON + 70]), 50, 100, tail)
    assert infill.music_before_middle(np.concatenate([p, [ON + 61]])).tolist() == [
        ON + 60, ts(1), ON + 62, MID, ON + 61
    ]  # fmt: skip
    assert infill.music_before_middle(p[:-1]).tolist() == [ON + 60, ts(1), ON + 62]


def test_join_tokens_repeat_the_start_after_the_gap_before_middle():
    prefix, suffix = np.arange(10, 20), np.arange(30, 40)
    three = infill.Layout(3)
    p = infill.prompt(prefix, suffix, 150, 100, three)
    assert p.tolist() == [
        SOS_ID, GAP, ts(100), ts(50), SUF, *range(30, 40), PRE, *range(10, 20), SUF, 30, 31, 32, MID
    ]  # fmt: skip
    # the repeat's 4 tokens come out of the room: 18 tokens, the suffix gets half of the 7 left
    assert infill.prompt(prefix, suffix, 150, 18, three).tolist() == [
        SOS_ID, GAP, ts(100), ts(50), SUF, 30, 31, 32, PRE, 16, 17, 18, 19, SUF, 30, 31, 32, MID
    ]  # fmt: skip
    assert len(infill.prompt(prefix, suffix[:1], 150, 100, three)) == 5 + 1 + 1 + 10 + 2 + 1
    with pytest.raises(ValueError, match="infill_join must be in"):
        infill.prompt(prefix, suffix, 150, 100, infill.Layout(infill.MAX_JOIN_TOKENS + 1))
    with pytest.raises(ValueError, match="infill_join needs infill"):
        get_config("tiny", infill_join=8)


def test_tail_tokens_move_the_end_before_the_gap_after_the_repeat():
    """``Layout.tail`` K: the last K tokens before the gap follow the repeat, behind a second
    PREFIX, so MIDDLE comes right after the music it continues; the room is the same less
    that PREFIX, and a tail longer than the part before the gap moves all of it."""
    prefix, suffix = np.arange(10, 20), np.arange(30, 40)
    p = infill.prompt(prefix, suffix, 150, 100, infill.Layout(3, 4))
    assert p.tolist() == [
        SOS_ID, GAP, ts(100), ts(50), SUF, *range(30, 40), PRE, *range(10, 16),
        SUF, 30, 31, 32, PRE, 16, 17, 18, 19, MID,
    ]  # fmt: skip
    assert infill.prompt(prefix, suffix, 150, 19, infill.Layout(3, 4)).tolist() == [
        SOS_ID, GAP, ts(100), ts(50), SUF, 30, 31, 32, PRE, SUF, 30, 31, 32, PRE,
        16, 17, 18, 19, MID,
    ]  # fmt: skip
    p = infill.prompt(prefix[:2], suffix, 150, 100, infill.Layout(1, 4))
    assert p.tolist()[-7:] == [PRE, SUF, 30, PRE, 10, 11, MID]
    for bad, message in [
        (infill.Layout(0, 4), "infill_tail needs infill_join"),
        (infill.Layout(3, infill.MAX_TAIL_TOKENS + 1), "infill_tail must be in"),
    ]:
        with pytest.raises(ValueError, match=message):
            infill.prompt(prefix, suffix, 150, 100, bad)
    with pytest.raises(ValueError, match="infill_tail needs infill_join"):
        get_config("tiny", infill=True, infill_tail=8)


def _split(pieces):
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])])
    return TokenSplit(tokens=np.concatenate(pieces), offsets=offsets, pieces=[{}] * len(pieces))


def _piece(rng, n_events):
    """A random performance: NOTE_ON/OFF pairs and TIME_SHIFTs."""
    out = []
    for _ in range(n_events):
        p = int(rng.integers(40, 90))
        out += [ON + p, ts(int(rng.integers(1, 60))), OFF + p, ts(int(rng.integers(1, 30)))]
    return np.array(out, np.int32)


def _infill_rows(piece_seed, batch_seed, seq_len, batch_size, **infill_kw):
    """An infilling-only batch (gaps of 0.5 s up to ``max_gap_steps``, default 2 s) of a random
    piece: ([SOS] + the piece, the rows without their PAD)."""
    piece = _piece(np.random.default_rng(piece_seed), 400)
    batches = TrainBatches(
        _split([piece]),
        seq_len=seq_len,
        num_targets=40,
        batch_size=batch_size,
        seed=batch_seed,
        augmentation=NO_AUGMENTATION,
        infill=Infill(**{"share": 1.0, "min_gap_steps": 50, "max_gap_steps": 200,
                         "post_tokens": 800, **infill_kw}),
    )  # fmt: skip
    return np.concatenate([[SOS_ID], piece]), [r[r != PAD_ID] for r in batches.batch(0)]


@pytest.mark.parametrize("seed", range(4))
def test_infill_crops_are_the_piece_rearranged(seed):
    """Without augmentation, an infilling row is [SOS GAP shifts SUF suffix PRE prefix MID
    middle] where prefix + middle is a run of [SOS] + piece, the suffix follows the real gap's
    end there, and the shifts add up to the gap's music time."""
    seq, rows = _infill_rows(seed, seed, 300, 6, max_gap_steps=300)
    seen = 0
    for row in rows:
        assert len(row) <= 300
        if GAP not in row:  # the gap fell after the piece's end: a plain crop
            assert not np.isin(row, [SUF, PRE, MID]).any()
            continue
        seen += 1
        assert row[:2].tolist() == [SOS_ID, GAP]
        (s,), (p,), (m,) = (np.nonzero(row == x)[0] for x in (SUF, PRE, MID))
        assert 2 < s < p < m
        steps = infill.shift_steps(row[2:s]).sum()
        suffix, prefix, middle = row[s + 1 : p], row[p + 1 : m], row[m + 1 :]
        run = np.concatenate([prefix, middle])
        starts = [i for i in range(len(seq) - len(run) + 1) if (seq[i : i + len(run)] == run).all()]
        assert starts, "prefix + middle is not a run of the piece"
        a = starts[0] + len(prefix)
        assert seq[a - 1] >= TS  # the gap starts just after a TIME_SHIFT
        a2, b = infill.span(seq, infill.time_before(seq)[a], infill.time_before(seq)[a] + steps)
        assert a2 == a and infill.gap_steps(seq, a, b) == steps
        assert len(middle) <= b - a
        np.testing.assert_array_equal(suffix, seq[b : b + len(suffix)])
    assert seen >= 3


@pytest.mark.parametrize("whole, expect_whole", [(1.0, True), (0.0, False)])
def test_whole_middle_crops_end_at_the_join(whole, expect_whole):
    """With ``whole=1`` every infilling row ends exactly at the gap's end (the whole middle is
    in the row, so the tokens before the join are targets); with 0 most rows stop short."""
    seq, rows = _infill_rows(5, 2, 600, 16, whole=whole)
    times = infill.time_before(seq)
    ends = []
    for row in rows:
        if GAP not in row:
            continue
        (s,), (p,), (m,) = (np.nonzero(row == x)[0] for x in (SUF, PRE, MID))
        steps = int(infill.shift_steps(row[2:s]).sum())
        prefix, middle = row[p + 1 : m], row[m + 1 :]
        run = np.concatenate([prefix, middle])
        a = next(i for i in range(len(seq)) if (seq[i : i + len(run)] == run).all()) + len(prefix)
        _, b = infill.span(seq, times[a], times[a] + steps)
        ends.append(a + len(middle) == b)
    assert len(ends) >= 8
    assert all(ends) if expect_whole else sum(ends) < len(ends) / 2


def test_infill_whole_is_bounded():
    with pytest.raises(ValueError, match="whole share"):
        Infill(share=0.5, whole=1.5)


def test_infill_share_zero_changes_no_batch():
    rng = np.random.default_rng(0)
    split = _split([_piece(rng, 300)])
    kw = dict(seq_len=200, num_targets=40, batch_size=4, seed=1)
    np.testing.assert_array_equal(
        TrainBatches(split, **kw).batch(3), TrainBatches(split, infill=Infill(), **kw).batch(3)
    )


def test_sentinels_are_reserved_and_their_own_class():
    ids = jnp.arange(VOCAB_SIZE - 2, INPUT_VOCAB_SIZE)
    kinds = np.asarray(event_kind(ids))
    assert kinds[:2].tolist() == [4, 4] and (kinds[2:] == RESERVED_KIND).all()
    assert np.asarray(coarse(ids))[2:].tolist() == [GAP, SUF, PRE, MID]


def test_noise_never_touches_the_gap_length():
    head = infill.prompt(np.full(30, ts(40)), np.full(30, ts(40)), 1234, 200)
    tokens = jnp.asarray(np.tile(head, (4, 1)))
    noised = np.asarray(noise_inputs(jax.random.key(0), tokens, 0.99, "compress"))
    s = int(np.nonzero(head == SUF)[0][0])
    np.testing.assert_array_equal(noised[:, :s], np.asarray(tokens)[:, :s])
    assert (noised[:, s:] != np.asarray(tokens)[:, s:]).any()  # the music after it is noised


def test_loss_never_targets_a_sentinel():
    cfg = get_config("tiny", infill=True)
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    model.logits.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), model.logits.kernel.shape)
    row = infill.prompt(np.arange(10, 40), np.arange(50, 70), 120, 64)
    row = np.concatenate([np.full(65 - len(row) - 5, PAD_ID), row, [ON + 1, ON + 2, ts(3)]])
    tokens = jnp.asarray(row[None].astype(np.int32))
    _, metrics = loss_fn(model, tokens)
    as_pad = jnp.where(tokens >= VOCAB_SIZE, PAD_ID, tokens)
    n_targets = int(np.sum((row[-cfg.num_latents :] != PAD_ID) & (row[-cfg.num_latents :] < 391)))
    assert int(metrics["num_tokens"]) == n_targets
    assert np.isfinite(float(metrics["nll"]))
    # the same targets as with the sentinel targets made PAD (the inputs keep the sentinels)
    logits = model(tokens[:, :-1])
    tgt = np.asarray(as_pad[0, -cfg.num_latents :])
    lp = jax.nn.log_softmax(logits[0])
    keep = tgt != PAD_ID
    want = -float(jnp.take_along_axis(lp, jnp.asarray(tgt)[:, None], axis=-1)[keep[:, None]].mean())
    np.testing.assert_allclose(float(metrics["nll"]), want, rtol=1e-5)


def test_a_model_grown_for_infill_computes_the_same_on_plain_music():
    base_cfg = get_config("tiny", match_lookup=4)
    base = PerceiverAR(base_cfg, rngs=nnx.Rngs(0))
    base.logits.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), base.logits.kernel.shape)
    grown = PerceiverAR(dataclasses.replace(base_cfg, infill=True), rngs=nnx.Rngs(5))
    found = nnx.state(base, nnx.Param)
    specs = param_specs(found), param_specs(nnx.state(grown, nnx.Param))
    assert "embed.embedding" in params_mismatch(*specs)
    assert params_mismatch(*specs, allow_additions=True) == ""
    new_rows = np.asarray(grown.embed.embedding[...][VOCAB_SIZE:])
    grow_params(found, grown)
    nnx.update(grown, found)
    np.testing.assert_array_equal(np.asarray(grown.embed.embedding[...][VOCAB_SIZE:]), new_rows)
    tokens = jnp.asarray(np.random.default_rng(0).integers(3, VOCAB_SIZE, (2, 64)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(grown(tokens)), np.asarray(base(tokens)))
    # a sentinel in the input changes the output, and nothing is NaN
    with_fim = tokens.at[:, 5].set(SUF).at[:, 9].set(PRE)
    out = np.asarray(grown(with_fim))
    assert np.isfinite(out).all() and not np.allclose(out, np.asarray(base(tokens)))


def test_infill_benchmark_scores_every_middle_token_once():
    from benchmarks.infill import middle_nll, pick_gaps, summarise

    cfg = get_config("tiny", infill=True)
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    model.logits.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), model.logits.kernel.shape)
    rng = np.random.default_rng(0)
    split = _split([_piece(rng, 60), _piece(rng, 400), _piece(rng, 400)])  # the first: too short
    gaps = pick_gaps(split, 1.0, 3, seed=0)
    assert len(gaps) == 3 and all(g["piece"] > 0 for g in gaps)
    rows = middle_nll(model, gaps, batch=2)
    n = cfg.max_len
    for g, r in zip(gaps, rows, strict=True):
        assert r["tokens"] == g["b"] - g["a"] == r["both"].size == r["before"].size
        assert np.isfinite(r["both"]).all() and (r["both"] > 0).all()
        # oracle: before-only, the middle's tokens are scored M at a time, each window a plain
        # forward over the N tokens before its last target
        seq, a, b, m = g["seq"], g["a"], g["b"], cfg.num_latents
        t1 = min(a + m, b)
        logp = jax.nn.log_softmax(model(jnp.asarray(seq[None, t1 - 1 - n : t1 - 1]))[0])
        want = [-float(logp[t - (t1 - m), seq[t]]) for t in range(a, t1)]
        np.testing.assert_allclose(r["before"][: t1 - a], want, rtol=1e-4)
        assert r["to_join"][0] == r["seconds"] and r["to_join"][-1] > 0
    # equal prefix: the before-only arm reads only the prompt's part before the gap
    same = middle_nll(model, gaps, batch=2, equal_prefix=True)
    for g, r, e in zip(gaps, rows, same, strict=True):
        np.testing.assert_array_equal(e["both"], r["both"])
        seq, a = g["seq"], g["a"]
        steps = infill.gap_steps(seq, a, g["b"])
        prompt = infill.prompt(seq[:a], seq[g["b"] :], steps, n + 1 - r["tokens"])
        kept = int(np.nonzero(prompt == MID)[0][0] - np.nonzero(prompt == PRE)[0][0] - 1)
        sub = seq[a - kept : g["b"]]  # the first window, as above, over the kept prefix only
        t1 = min(kept + m, sub.size)
        logp = jax.nn.log_softmax(model(jnp.asarray(sub[None, max(0, t1 - 1 - n) : t1 - 1]))[0])
        np.testing.assert_allclose(
            e["before"][0], -float(logp[kept - (t1 - m), sub[kept]]), rtol=1e-4
        )
    s = summarise(rows)
    assert s["tokens"] == sum(r["tokens"] for r in rows)
    assert s["gain"] == pytest.approx(s["nll_before_only"] - s["nll_both_sides"])
    assert "reads_after" not in s
    # wrong after: the prompt of each gap with the next gap's part after the gap
    wrong = middle_nll(model, gaps, batch=2, wrong_after=True)
    for i, (g, r, w) in enumerate(zip(gaps, rows, wrong, strict=True)):
        np.testing.assert_array_equal(w["both"], r["both"])
        other = gaps[(i + 1) % len(gaps)]
        seq, a, b = g["seq"], g["a"], g["b"]
        steps = infill.gap_steps(seq, a, b)
        prompt = infill.prompt(seq[:a], other["seq"][other["b"] :], steps, n + 1 - r["tokens"])
        t1 = min(prompt.size + m, prompt.size + r["tokens"])
        full = np.concatenate([prompt, seq[a:b]])
        logp = jax.nn.log_softmax(model(jnp.asarray(full[None, t1 - 1 - n : t1 - 1]))[0])
        want = [-float(logp[t - (t1 - m), full[t]]) for t in range(prompt.size, t1)]
        np.testing.assert_allclose(w["wrong"][: t1 - prompt.size], want, rtol=1e-4)
        assert not np.allclose(w["wrong"], r["both"])
    s = summarise(wrong)
    assert s["reads_after"] == pytest.approx(s["nll_wrong_after"] - s["nll_both_sides"])


def test_infill_benchmark_chunked_windows_and_reanchored_prompts():
    from benchmarks.infill import chunks, middle_nll, pick_gaps

    cfg = get_config("tiny", infill=True)
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    model.logits.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), model.logits.kernel.shape)
    rng = np.random.default_rng(0)
    split = _split([_piece(rng, 400), _piece(rng, 400)])
    gaps = pick_gaps(split, 1.5, 2, seed=1)
    n, m, size = cfg.max_len, cfg.num_latents, 6

    def oracle(full, c, e):  # targets full[c:e], the latent window ending at e (left-padded)
        x = np.zeros(n, np.int32)
        inp = full[max(0, e - 1 - n) : e - 1]
        x[n - inp.size :] = inp
        logp = jax.nn.log_softmax(model(jnp.asarray(x[None]))[0])
        return [-float(logp[t - (e - m), full[t]]) for t in range(c, e)]

    plain = middle_nll(model, gaps, batch=2, chunk=size)
    again = middle_nll(model, gaps, batch=2, chunk=size, reanchor=True)
    for g, r, q in zip(gaps, plain, again, strict=True):
        seq, a, b = g["seq"], g["a"], g["b"]
        spans = chunks(seq, a, b, size)
        # spans tile [a, b), each at least `size` long (but the last) and cut after a TIME_SHIFT
        assert len(spans) > 1 and spans[0][0] == a and spans[-1][1] == b
        assert all(e == c2 for (_, e), (c2, _) in zip(spans, spans[1:], strict=False))
        assert all(e - c >= size and is_shift(seq[e - 1]) for c, e in spans[:-1])
        assert r["both"].size == r["before"].size == q["both"].size == b - a
        steps = infill.gap_steps(seq, a, b)
        prompt = infill.prompt(seq[:a], seq[b:], steps, n + 1 - (b - a))
        full = np.concatenate([prompt, seq[a:b]])
        p = prompt.size - a
        for c, e in spans:  # every span: the latent window ends at its end, in both arms
            np.testing.assert_allclose(r["before"][c - a : e - a], oracle(seq, c, e), rtol=1e-4)
            want = oracle(full, p + c, p + e)
            np.testing.assert_allclose(r["both"][c - a : e - a], want, rtol=1e-4)
        c, e = spans[1]
        # reanchored: the second span has a prompt for the rest of the gap [c, b)
        rest = infill.prompt(seq[:c], seq[b:], infill.gap_steps(seq, c, b), n + 1 - (e - c))
        full = np.concatenate([rest, seq[c:e]])
        np.testing.assert_allclose(
            q["both"][c - a : e - a], oracle(full, rest.size, full.size), rtol=1e-4
        )
        np.testing.assert_array_equal(q["before"], r["before"])
        assert not np.allclose(q["both"][c - a :], r["both"][c - a :])
    with pytest.raises(ValueError, match="reanchor needs chunk"):
        middle_nll(model, gaps, reanchor=True)


def is_shift(token) -> bool:
    return bool(TS <= token < TS + 100)


def test_infill_benchmark_counts_the_held_pitches_sounding_at_the_end():
    from benchmarks.infill import held_at_end, held_pitches

    after = np.array([OFF + 50, ON + 55, ts(20), OFF + 52, OFF + 55, ON + 60, ts(5), OFF + 60])
    held = held_pitches(after)
    assert np.nonzero(held)[0].tolist() == [50, 52]  # 55 and 60 start after the gap
    notes = np.array([  # pitch, velocity, start, end (s): the gap ends at 2.0
        [50, 80, 1.5, 2.0],  # held, closed at the end: sounds there
        [52, 80, 0.5, 1.2],  # held, released before the end
        [60, 80, 1.9, 2.5],  # sounds at the end, not held
        [52, 80, 2.0, 2.4],  # starts at the end: the part after it
    ])  # fmt: skip
    assert held_at_end(notes, 2.0, held) == 1
    assert held_at_end(notes[1:], 2.0, held) == 0


def test_gap_clock_table_and_running_state_equal_the_full_count():
    from perceiver_midi.model import gap_clock

    # gap 250 steps (2.5 s); the middle plays 100, 100, 40 and 10 steps
    p = infill.prompt(np.array([ON + 60, ts(30)]), np.array([ON + 62, ts(5)]), 250, 100)
    middle = [ON + 64, ts(100), ts(100), OFF + 64, ts(40), ts(10)]
    seq = np.concatenate([p, middle])
    got, last, _ = gap_clock.buckets(jnp.asarray(seq[None]), len(middle) + 2, held=True)
    # the prefix's last token (outside), MIDDLE (2.5 s left), then after each middle token
    assert np.asarray(got)[0].tolist() == [0, 7, 7, 6, 4, 4, 2, 1]
    state = gap_clock.empty(1)
    running = []
    for tok in seq:
        state = gap_clock.advance(state, jnp.asarray([tok]))
        running.append(int(gap_clock.bucket(state.middle, state.length, state.elapsed)[0]))
    assert running[-len(middle) - 2 :] == np.asarray(got)[0].tolist()
    assert set(running[: len(p) - 1]) == {0}
    for a, b in zip(last, state, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("join, tail", [(0, 0), (1, 0), (1, 1)])
def test_segments_table_and_running_state_agree(join, tail):
    from perceiver_midi.model import gap_clock

    suffix = np.array([ON + 62, ts(5)])
    layout = infill.Layout(join, tail)
    p = infill.prompt(np.array([ON + 60, ts(30)]), suffix, 250, 100, layout)
    seq = np.concatenate([[ON + 1, ts(2)], p, [ON + 64, ts(100)]])  # plain music first
    # plain, SOS, GAP + the length (2.5 s: 3 TIME_SHIFTs), SUFFIX + the part after, PREFIX +
    # the part before, (SUFFIX + the repeated start, (PREFIX + the tail before the gap,))
    # MIDDLE + the middle
    before = [0, 0, 0] if not tail else [0, 0, 2, 2, 0, 0]
    want = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2] + before + [2, 2] * (join and not tail) + [3, 3, 3]
    assert np.asarray(gap_clock.segments(jnp.asarray(seq[None])))[0].tolist() == want
    state, running = gap_clock.empty(1), []
    for tok in seq:
        state = gap_clock.advance(state, jnp.asarray([tok]))
        running.append(int(gap_clock.segment(state)[0]))
    assert running == want
    _, last, _ = gap_clock.buckets(jnp.asarray(seq[None]), 3, held=True)
    for a, b in zip(last, state, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_join_pitches_are_the_first_second_after_the_gap():
    from perceiver_midi.model import gap_clock

    suffix = [ON + 50, ts(60), ON + 52, OFF + 50, ts(40), ON + 55, ts(1), ON + 57]  # 55 at 1 s
    p = infill.prompt(np.array([ON + 60, ts(30)]), np.array(suffix), 250, 100)
    seq = np.concatenate([p, [ON + 64, ts(20)]])
    _, last, _ = gap_clock.buckets(jnp.asarray(seq[None]), 3, held=True)
    assert np.nonzero(np.asarray(last.join)[0])[0].tolist() == [50, 52]
    state = gap_clock.empty(1)
    for tok in seq:
        state = gap_clock.advance(state, jnp.asarray([tok]))
    np.testing.assert_array_equal(np.asarray(state.join), np.asarray(last.join))
    # only the middle's latents see them
    feats = gap_clock.join_features(last.join, jnp.asarray([[False, True, True]]))
    assert np.asarray(feats)[0].sum(axis=-1).tolist() == [0.0, 2.0, 2.0]


@pytest.mark.parametrize("layout", [infill.Layout(), infill.Layout(3, 2)])
def test_pending_pitches_table_and_running_state_agree(layout):
    """The part after the gap starts with NOTE_OFFs of 50 and 52 (sounding across its end) and
    plays 55 on and off: 50 and 52 are held, 55 is not. Inside the middle a held pitch is
    pending until struck, again after its NOTE_OFF; 52, struck before the gap and still
    sounding, is not; nothing is pending outside a middle."""
    from perceiver_midi.model import gap_clock

    suffix = [OFF + 50, ON + 55, ts(20), OFF + 52, OFF + 55, ON + 50, ts(10)]
    p = infill.prompt(np.array([ON + 60, ts(30), ON + 52]), np.array(suffix), 250, 100, layout)
    middle = [ON + 50, ts(50), OFF + 50, ON + 52, ts(40), ON + 55]
    seq = np.concatenate([[ON + 50, OFF + 52], p, middle])  # plain music first: not a middle
    m = len(middle) + 2
    _, last, got = gap_clock.buckets(jnp.asarray(seq[None]), m, held=True)
    assert np.nonzero(np.asarray(last.held)[0])[0].tolist() == [50, 52]
    # the prompt's last token, MIDDLE, then after each middle token: the pitches pending
    want = [[], [50], [], [], [50], [50], [50], [50]]
    assert [np.nonzero(row)[0].tolist() for row in np.asarray(got)[0]] == want
    state, running = gap_clock.empty(1), []
    for tok in seq:
        state = gap_clock.advance(state, jnp.asarray([tok]))
        bucket = gap_clock.bucket(state.middle, state.length, state.elapsed)[:, None]
        running.append(np.asarray(gap_clock.pending(state.held, state.sounding[:, None], bucket)))
    assert [np.nonzero(r[0, 0])[0].tolist() for r in running[-m:]] == want
    assert not np.any(np.concatenate(running[:-m]))
    for a, b in zip(last, state, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_held_bonus_moves_only_the_pending_notes_inside_a_middle():
    """A model grown with ``gap_held`` loads a checkpoint without it and computes the same; a
    bonus then raises the pending pitches' NOTE_ONs inside a middle, keeps the NOTE_ONs' total
    and every other token's logit, and changes nothing outside a middle."""
    base_cfg = get_config("tiny", infill=True, gap_clock=True)
    base = PerceiverAR(base_cfg, rngs=nnx.Rngs(0))
    base.logits.kernel[...] = 0.3 * jax.random.normal(jax.random.key(1), base.logits.kernel.shape)
    grown = PerceiverAR(dataclasses.replace(base_cfg, gap_held=True), rngs=nnx.Rngs(5))
    found = nnx.state(base, nnx.Param)
    specs = param_specs(found), param_specs(nnx.state(grown, nnx.Param))
    assert params_mismatch(*specs, allow_additions=True) == ""
    nnx.update(grown, found)
    row = infill.prompt(np.arange(10, 40), np.array([OFF + 50, OFF + 52, ts(5)]), 120, 60)
    tokens = jnp.asarray(np.concatenate([row, [ON + 50, ts(30), ON + 2, ts(3)]])[None, -64:])
    np.testing.assert_array_equal(np.asarray(grown(tokens)), np.asarray(base(tokens)))
    grown.gap_held_bonus[...] = jnp.full(grown.gap_held_bonus.shape, 0.1)  # 1.6 nats
    old, new = np.asarray(base(tokens))[0], np.asarray(grown(tokens))[0]
    middle = np.asarray(tokens[0] == MID).cumsum()[-old.shape[0] :] > 0
    np.testing.assert_array_equal(new[~middle], old[~middle])
    on = slice(ON, ON + 128)
    np.testing.assert_allclose(new[:, :ON], old[:, :ON])
    np.testing.assert_allclose(new[:, ON + 128 :], old[:, ON + 128 :])
    lse = jax.scipy.special.logsumexp
    np.testing.assert_allclose(lse(new[:, on], axis=-1), lse(old[:, on], axis=-1), rtol=1e-5)
    lift = new[middle][:, on] - old[middle][:, on]
    # at MIDDLE both are pending; after NOTE_ON 50 (and its shift) only 52 is
    assert lift[0, 50] == pytest.approx(lift[0, 52]) and lift[0, 50] > lift[0, 60] + 1.5
    assert lift[-1, 52] > lift[-1, 50] + 1.5 and lift[-1, 50] == pytest.approx(lift[-1, 60])


@pytest.mark.parametrize("addition", ["gap_clock", "gap_segments"])
def test_a_model_grown_with_a_gap_map_starts_unchanged(addition):
    """A zero-initialised addition (the clock, on the latents; the segments, on every input)
    loads a checkpoint without it and computes the same function until it is trained."""
    base_cfg = get_config("tiny", infill=True, gap_clock=addition != "gap_clock")
    base = PerceiverAR(base_cfg, rngs=nnx.Rngs(0))
    trained = [base.logits.kernel] + ([base.gap_clock.embedding] if base_cfg.gap_clock else [])
    for w in trained:
        w[...] = 0.3 * jax.random.normal(jax.random.key(w.shape[0]), w.shape)
    grown = PerceiverAR(dataclasses.replace(base_cfg, **{addition: True}), rngs=nnx.Rngs(5))
    found = nnx.state(base, nnx.Param)
    specs = param_specs(found), param_specs(nnx.state(grown, nnx.Param))
    assert params_mismatch(*specs, allow_additions=True) == ""
    nnx.update(grown, found)
    row = infill.prompt(np.arange(10, 40), np.arange(50, 70), 120, 60)
    tokens = jnp.asarray(np.concatenate([row, [ON + 1, ts(30), ON + 2, ts(3)]])[None, -64:])
    np.testing.assert_array_equal(np.asarray(grown(tokens)), np.asarray(base(tokens)))
    table = getattr(grown, addition).embedding
    table[...] = table[...].at[1:].set(1.0)  # inside a middle; the prompt's parts
    assert not np.allclose(np.asarray(grown(tokens)), np.asarray(base(tokens)))


def test_the_gap_maps_need_infill():
    for name in ("gap_clock", "gap_join", "gap_segments"):
        with pytest.raises(ValueError, match="gap_clock, gap_join and gap_segments need infill"):
            get_config("tiny", **{name: True})


def test_clock_and_join_are_causal():
    """Changing the tokens after a latent's position leaves its logits as they were, also where
    the latents run from the part before the gap into the middle."""
    cfg = get_config(
        "tiny", infill=True, gap_clock=True, gap_join=True, gap_segments=True, gap_held=True
    )
    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    maps = (model.gap_clock.embedding, model.gap_join.kernel, model.gap_segments.embedding,
            model.gap_held.kernel)  # fmt: skip
    for w in (model.logits.kernel, *maps):
        w[...] = 0.5 * jax.random.normal(jax.random.key(w.shape[0]), w.shape)
    model.gap_held_bonus[...] = jnp.full(model.gap_held_bonus.shape, 0.1)
    rng = np.random.default_rng(0)
    suffix = np.array([ON + 50, OFF + 62, ts(30), ON + 52, OFF + 64, ts(80)])
    head = infill.prompt(rng.integers(3, 359, size=80), suffix, 150, cfg.max_len - 8)
    tokens = np.concatenate([head, [ON + 60, ts(40), ON + 62, ts(20), OFF + 60, ts(50), 0, 0]])
    tokens = tokens[None, : cfg.max_len].astype(np.int32)
    tokens[0, -2:] = [ON + 64, ts(10)]
    logits = np.asarray(model(jnp.asarray(tokens)))
    n, m = cfg.max_len, cfg.num_latents
    mid = int(np.nonzero(tokens[0] == MID)[0][0])
    assert n - m < mid < n - 2  # latents before and after MIDDLE
    for p in (mid - 1, mid, mid + 3, n - 2):
        changed = tokens.copy()
        changed[0, p + 1 :] = rng.integers(3, 359, size=n - p - 1)
        np.testing.assert_allclose(
            np.asarray(model(jnp.asarray(changed)))[0, p - (n - m)], logits[0, p - (n - m)],
            atol=1e-5,
        )  # fmt: skip


def test_infill_lr_scale_moves_only_the_gap_maps_faster():
    from perceiver_midi.model.checkpoint import param_name
    from perceiver_midi.model.train import TrainConfig, infill_mask

    cfg = get_config(
        "tiny", infill=True, gap_clock=True, gap_join=True, gap_segments=True, gap_held=True
    )
    params = nnx.state(PerceiverAR(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    flat = jax.tree_util.tree_flatten_with_path(infill_mask(params))[0]
    picked = sorted(param_name(p) for p, on in flat if on)
    assert picked == ["gap_clock.embedding", "gap_held.kernel", "gap_held_bonus", "gap_join.kernel"]

    def moved(scale):
        from perceiver_midi.model.train import make_optimizer

        model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
        tc = TrainConfig(
            preset="tiny", learning_rate=1e-3, warmup_steps=0, infill_lr_scale=scale,
            model_overrides=(("infill", True),),
        )  # fmt: skip
        opt = make_optimizer(model, tc)
        before = {k: np.asarray(v) for k, v in _named(model).items()}
        grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
        opt.update(model, grads)
        return {k: np.abs(np.asarray(v) - before[k]).max() for k, v in _named(model).items()}

    one, twenty = moved(1.0), moved(20.0)
    assert twenty["gap_join.kernel"] == pytest.approx(20 * one["gap_join.kernel"], rel=1e-3)
    assert twenty["embed.embedding"] == pytest.approx(one["embed.embedding"], rel=1e-6)
    assert twenty["gap_segments.embedding"] == pytest.approx(one["gap_segments.embedding"])


def _named(model):
    from perceiver_midi.model.checkpoint import param_name

    flat = jax.tree_util.tree_flatten_with_path(nnx.state(model, nnx.Param))[0]
    return {param_name(p): v for p, v in flat}


@pytest.mark.parametrize("tail", [0, 5])
def test_crops_with_join_tokens_repeat_the_real_start_after_the_gap(tail):
    """A model with ``infill_join`` trains on its layout: the part after the gap's first tokens
    again between the part before the gap and MIDDLE (with ``infill_tail``, before the part
    before's last tokens), the part before still running straight into the real middle."""
    seq, rows = _infill_rows(7, 4, 600, 12, whole=1.0, layout=infill.Layout(4, tail))
    seen = 0
    for row in rows:
        assert len(row) <= 600
        if GAP not in row:
            continue
        seen += 1
        (s0, s1), pre, (m,) = (np.nonzero(row == x)[0] for x in (SUF, PRE, MID))
        assert len(pre) == 1 + bool(tail) and s0 < pre[0] < s1 < m
        assert not tail or s1 < pre[-1] < m
        suffix, prefix = row[s0 + 1 : pre[0]], row[pre[0] + 1 : s1]
        head = row[s1 + 1 : pre[-1] if tail else m]
        np.testing.assert_array_equal(head, suffix[:4])
        if tail:
            assert m - pre[-1] - 1 == tail
            prefix = np.concatenate([prefix, row[pre[-1] + 1 : m]])
        middle = row[m + 1 :]
        run = np.concatenate([prefix, middle])
        assert any((seq[i : i + len(run)] == run).all() for i in range(len(seq) - len(run) + 1))
        assert infill.music_before_middle(row).tolist() == [*prefix, MID, *middle]
    assert seen >= 6


def test_infill_bonus_pitch_sets_table():
    from benchmarks.infill_bonus import SETS, pitch_sets

    after = np.array([
        OFF + 50,  # held (first met as a NOTE_OFF)
        ON + 60, ON + 64,  # join: started in the first second
        ts(100), ON + 72,  # at 1 s: after_3s (72 is also pitch class 0, but a start after 1 s)
        ts(100), ON + 67, OFF + 60,  # at 2 s: after_3s
        ts(100), ON + 62,  # at 3 s: too late for any set
    ])  # fmt: skip
    got = {s: np.nonzero(row)[0].tolist() for s, row in zip(SETS, pitch_sets(after), strict=True)}
    join_class = [p for p in range(128) if p % 12 in (0, 4) and p not in (60, 64)]
    assert got == {"join": [60, 64], "join_class": join_class, "after_3s": [67, 72], "held": [50]}


def test_infill_bonus_fit_finds_a_planted_bonus_and_nothing_without_one():
    """Oracle: middles whose every target is a join pitch's NOTE_ON under flat log-probabilities
    gain from a positive join bonus; the held arm (no held pitches here) gains nothing."""
    from benchmarks.infill_bonus import SETS, fit, gains

    rng = np.random.default_rng(0)
    t = 200
    sets = np.zeros((2, len(SETS), 128), bool)
    sets[:, 0, [60, 64, 67]] = True  # join pitches of both middles
    rows = {
        "logp": np.full((t, VOCAB_SIZE), -np.log(VOCAB_SIZE), np.float32),
        "target": ON + rng.choice([60, 64, 67], t),
        "bucket": rng.integers(2, 10, t),
        "left": rng.uniform(0.05, 10, t),
        "seconds": np.repeat([2.0, 10.0], t // 2),
        "sets": sets,
        "middle": np.repeat([0, 1], t // 2),
    }
    join = fit(rows, [True, False, False, False])
    assert (join[0, 2:] > 1).all() and not join[1:].any()  # unused sets stay 0
    g = gains(rows, join)
    assert g["gain"] > 1.0 and g["gain_2s"] > 1.0 and g["last_second_gain"] > 1.0
    held = fit(rows, [False, False, False, True])
    assert gains(rows, held)["gain"] == pytest.approx(0.0, abs=1e-6)
