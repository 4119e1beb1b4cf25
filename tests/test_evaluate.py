"""Evaluation: every token scored exactly once, equal to a direct per-window computation."""

import numpy as np
import pytest
from flax import nnx

from perceiver_midi.model.config import get_config
from perceiver_midi.model.data import TrainBatches, eval_windows, window_arrays
from perceiver_midi.model.evaluate import evaluate
from perceiver_midi.model.perceiver_ar import PerceiverAR
from perceiver_midi.model.sampler import sounding_pitches
from perceiver_midi.model.vocab import NOTE_OFF_FIRST_ID as OFF
from perceiver_midi.model.vocab import NOTE_ON_FIRST_ID as ON
from perceiver_midi.model.vocab import PAD_ID, SOS_ID
from perceiver_midi.tokenizer.dataset import TokenSplit


def _split(lengths, seed=0):
    rng = np.random.default_rng(seed)
    pieces = [rng.integers(3, 391, n).astype(np.uint16) for n in lengths]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenSplit(
        tokens=np.concatenate(pieces),
        offsets=offsets,
        pieces=[{"name": f"p{i}"} for i in range(len(lengths))],
    )


@pytest.fixture(scope="module")
def model():
    return PerceiverAR(get_config("tiny"), rngs=nnx.Rngs(3))  # N = 64, M = 16


def test_windows_cover_every_token_once():
    lengths = np.array([1, 15, 16, 17, 100, 64])
    windows = eval_windows(lengths, 16)
    for p, n in enumerate(lengths):
        mine = [w for w in windows if w.piece == p]
        assert sum(w.n_targets for w in mine) == n
        assert mine[-1].end == n and all(0 < w.n_targets <= 16 for w in mine)


def _rule_logp(logp_V, sounding_P):
    """The sampler's NOTE_OFF rule on one log-distribution, written out in numpy."""
    off = slice(OFF, OFF + 128)
    p_V = np.exp(logp_V.astype(np.float64))
    p_off, p_on = p_V[off].sum(), p_V[off][sounding_P > 0].sum()
    out = p_V.copy()
    out[off] = np.where(sounding_P > 0, p_V[off] * (p_off / p_on if p_on > 0 else 0), 0)
    with np.errstate(divide="ignore"):  # silent NOTE_OFFs: log 0
        return np.log(out / out.sum())


def _direct_nll(model, split, context, rule=False):
    """Independent path: one unpadded forward per window, gather in numpy."""
    m = model.config.num_latents
    total, count = 0.0, 0
    for p in range(len(split)):
        seq = np.concatenate([[SOS_ID], split.piece(p)]).astype(np.int32)
        scored = 0
        while scored < seq.size - 1:
            end = min(scored + m, seq.size - 1)
            inp = seq[max(0, end - context) : end]
            logits = np.asarray(model(inp[None], num_latents=min(m, inp.size)))[0]
            logp = (
                logits
                - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
                - logits.max(-1, keepdims=True)
            )
            new = end - scored
            tgt = seq[end - new + 1 : end + 1]
            if rule:
                for k, t in enumerate(range(end - new + 1, end + 1)):
                    row = _rule_logp(logp[-new + k], sounding_pitches(seq[:t]))
                    total -= row[seq[t]]
            else:
                total -= logp[-new:][np.arange(new), tgt].sum()
            count += new
            scored = end
    return total / count, count


@pytest.mark.parametrize("context", [64, 24])
def test_eval_equals_direct_computation(model, context):
    split = _split([5, 16, 40, 150])
    got = evaluate(model, split, context=context, batch_size=4, progress=False)
    want, count = _direct_nll(model, split, context)
    assert got["tokens"] == count == 5 + 16 + 40 + 150
    assert got["pieces"] == 4 and got["context"] == context
    assert got["nll"] == pytest.approx(want, rel=1e-5)


def _played(lengths, seed=0):
    """Pieces as a pianist's tokens: every NOTE_OFF ends a sounding note (as note-seq writes)."""
    rng = np.random.default_rng(seed)
    pieces = []
    for n in lengths:
        ids, sounding = [], []
        while len(ids) < n:
            r = rng.random()
            if r < 0.35 or not sounding:
                pitch = int(rng.integers(40, 50))
                ids.append(ON + pitch)
                sounding.append(pitch)
            elif r < 0.7:
                ids.append(OFF + sounding.pop(int(rng.integers(len(sounding)))))
            else:
                ids.append(int(rng.integers(259, 391)))
        pieces.append(np.array(ids[:n], np.uint16))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenSplit(tokens=np.concatenate(pieces), offsets=offsets, pieces=[{}] * len(lengths))


def test_eval_with_note_off_rule_equals_direct_computation(model):
    """The NLL of what users sample (NOTE_OFF only for sounding pitches) on played pieces."""
    split = _played([30, 100])
    raw = evaluate(model, split, context=48, batch_size=4, progress=False)
    got = evaluate(model, split, context=48, batch_size=4, progress=False, note_off_rule=True)
    want, count = _direct_nll(model, split, 48, rule=True)
    assert got["tokens"] == count and got["nll"] == raw["nll"]  # the raw score is unchanged
    assert got["nll_note_off_rule"] == pytest.approx(want, rel=1e-5)
    assert got["nll_note_off_rule"] < raw["nll"] - 0.05  # every real target is as likely or more


@pytest.mark.parametrize("played", [True, False])
def test_sounding_counts_before_targets(played):
    """Counts before each target equal the sampler's decoding-rule count of the prefix, also
    with unmatched NOTE_OFFs (random ids), where a plain cumulative sum would go negative."""
    from perceiver_midi.model.evaluate import _SoundingCounts

    split = _played([70]) if played else _split([70], seed=4)
    seq = np.concatenate([[SOS_ID], split.piece(0)]).astype(np.int64)
    counts = _SoundingCounts()
    for win in eval_windows(np.array([70]), 16):
        got = counts.before_targets(split, win, 16)
        for k, t in enumerate(range(win.end - 16 + 1, win.end + 1)):
            want = sounding_pitches(seq[:t]) > 0 if t >= 1 else np.zeros(128, bool)
            np.testing.assert_array_equal(got[k], want)


def test_window_arrays_layout():
    split = _split([20])
    (win,) = [w for w in eval_windows(np.array([20]), 16) if w.end == 16]
    inputs, targets, mask = window_arrays(split, [win], 24, 16)
    piece = split.piece(0)
    assert inputs[0, :8].tolist() == [PAD_ID] * 8 and inputs[0, 8] == SOS_ID
    assert inputs[0, 9:].tolist() == piece[:15].tolist()
    assert targets[0].tolist() == piece[:16].tolist() and mask.all()


def test_train_batches_deterministic_and_shaped():
    split = _split([10, 300, 1000])
    batches = TrainBatches(split, seq_len=65, num_targets=16, batch_size=8, seed=1)
    a, b = batches.batch(7), batches.batch(7)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (8, 65) and a.dtype == np.int32
    assert not np.array_equal(a, batches.batch(8))
    # Every row has at least num_targets + 1 real tokens unless its piece is shorter.
    real = (a != PAD_ID).sum(1)
    assert (real >= 11).all()
