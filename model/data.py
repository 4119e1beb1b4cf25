"""Training crops and evaluation windows over prepared token splits (numpy; no JAX).

A piece is ``[SOS] + ids``. Training rows are random crops of up to N + 1 tokens, left-padded with
PAD, chosen so that all M latent positions have targets; the crop for (seed, step) is a pure
function of them, so "data position" for exact resume is just the step number.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from perceiver_midi.model import infill
from perceiver_midi.model.vocab import (
    PAD_ID,
    SOS_ID,
    TIME_SHIFT_FIRST_ID,
    VELOCITY_FIRST_ID,
    VOCAB_SIZE,
)
from perceiver_midi.tokenizer.augment import augment
from perceiver_midi.tokenizer.constants import NUM_VELOCITY_BINS
from perceiver_midi.tokenizer.dataset import TokenSplit
from perceiver_midi.tokenizer.retime import sketch_view


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """Magenta's MAESTRO augmentation: transpose within +-3 semitones, stretch time 0.95..1.05."""

    max_transpose: int = 3
    min_stretch: float = 0.95
    max_stretch: float = 1.05

    @property
    def enabled(self) -> bool:
        return self.max_transpose > 0 or self.min_stretch != 1.0 or self.max_stretch != 1.0


NO_AUGMENTATION = Augmentation(0, 1.0, 1.0)


@dataclasses.dataclass(frozen=True)
class Repeats:
    """Crops that end by playing an earlier passage of themselves again, re-performed.

    A share of the crops keeps its first part and replaces its last ``P`` tokens (``P`` drawn in
    ``[min_tokens, max_tokens]``, the replay cut just after a TIME_SHIFT) with a passage that
    started ``d`` tokens earlier, ``d`` drawn in ``[P, max_back]``: the targets ask the model to
    recognise what it has heard and continue it. The replay is re-performed: a ``jitter`` share of
    its TIME_SHIFTs moves by up to +-2 steps and of its VELOCITYs by +-1 bin. Real pieces repeat
    with other timing and loudness, so exact copies would teach the wrong thing.
    """

    share: float = 0.0
    min_tokens: int = 64
    max_tokens: int = 256
    max_back: int = 1500
    jitter: float = 0.3

    def __post_init__(self):
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"repeat share must be in [0, 1], got {self.share}")
        if not 1 <= self.min_tokens <= self.max_tokens <= self.max_back:
            raise ValueError("repeats need 1 <= min_tokens <= max_tokens <= max_back")


NO_REPEATS = Repeats()


@dataclasses.dataclass(frozen=True)
class Sketches:
    """Plain crops seen as a sketch from a DAW or notation program encodes them
    (``tokenizer.augment.sketch_view``), inputs and targets alike: a ``share`` of the plain crops
    has every onset and end on a grid of ``min_grid``..``max_grid`` steps (drawn per crop; 12.5 is
    a sixteenth at 120 bpm) and, for a ``one_velocity`` share of those, one loudness (a bin in
    ``min_bin``..``max_bin``). Users' primes are often such sketches; MAESTRO holds none, and the
    model keeps a quantized figure less often than the same figure played with human timing
    (``benchmarks/continuing.py``)."""

    share: float = 0.0
    min_grid: float = 5.0
    max_grid: float = 15.0
    one_velocity: float = 0.5
    min_bin: int = 12
    max_bin: int = 24

    def __post_init__(self):
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"sketch share must be in [0, 1], got {self.share}")
        if not 1.0 <= self.min_grid <= self.max_grid:
            raise ValueError("sketches need 1 <= min_grid <= max_grid")
        if not 0.0 <= self.one_velocity <= 1.0:
            raise ValueError(f"one_velocity must be in [0, 1], got {self.one_velocity}")
        if not 1 <= self.min_bin <= self.max_bin <= NUM_VELOCITY_BINS:
            raise ValueError(f"sketch velocity bins must be in 1..{NUM_VELOCITY_BINS}")

    def view(self, body: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        grid = float(rng.uniform(self.min_grid, self.max_grid))
        one = rng.random() < self.one_velocity
        vbin = int(rng.integers(self.min_bin, self.max_bin + 1)) if one else 0
        return sketch_view(body, grid, vbin)


NO_SKETCHES = Sketches()


@dataclasses.dataclass(frozen=True)
class Infill:
    """Crops that teach infilling (``model/infill.py``): a ``share`` of the rows puts a gap of
    ``min_gap_steps``..``max_gap_steps`` (10 ms steps) where a plain crop would end, shows up to
    ``infill.MAX_SUFFIX_TOKENS`` tokens of what follows the gap first, then the part before it,
    and ends at a random point of the real middle, or (a ``whole`` share of the rows) at the
    gap's end, so the middle's last tokens, where the part after the gap matters most, are
    targets as often as its first ones (a random end alone targets the join almost never).
    Needs a model with ``Config.infill``."""

    share: float = 0.0
    whole: float = 0.0  # of the infilling rows, this share ends at the gap's end (the join)
    min_gap_steps: int = 100
    max_gap_steps: int = 1200
    post_tokens: int = 4000  # raw tokens read after the gap's start (gap + suffix)
    layout: infill.Layout = infill.Layout()  # the model's (Config.infill_layout; infill.prompt)

    def __post_init__(self):
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"infill share must be in [0, 1], got {self.share}")
        if not 0.0 <= self.whole <= 1.0:
            raise ValueError(f"infill whole share must be in [0, 1], got {self.whole}")
        if not 1 <= self.min_gap_steps <= self.max_gap_steps:
            raise ValueError("infill needs 1 <= min_gap_steps <= max_gap_steps")


NO_INFILL = Infill()

_TS_LAST_ID = VELOCITY_FIRST_ID - 1


def _after_shift(body: np.ndarray, i: int, step: int) -> int:
    """The nearest index from ``i`` (moving by ``step``) that follows a TIME_SHIFT, or -1."""
    while 0 < i < body.size:
        if TIME_SHIFT_FIRST_ID <= body[i - 1] <= _TS_LAST_ID:
            return i
        i += step
    return -1


def replay(body: np.ndarray, rng: np.random.Generator, rep: Repeats) -> np.ndarray:
    """``body`` (no PAD) with its end replaced by a re-performed earlier passage (same length);
    ``body`` unchanged when it is too short for one."""
    p = int(rng.integers(rep.min_tokens, rep.max_tokens + 1))
    n = body.size
    if n < 2 * p + 1:
        return body
    cut = _after_shift(body, n - p, -1)
    if cut <= 0:
        return body
    p = n - cut
    hi = min(rep.max_back, cut)  # the first playing starts at cut - d >= 0 and ends before cut
    if hi < p:
        return body
    start = _after_shift(body, cut - int(rng.integers(p, hi + 1)), 1)
    if start < 0 or start + p > cut:
        return body
    passage = body[start : start + p].copy()
    hit = rng.random(p) < rep.jitter
    move = rng.integers(-2, 3, p)
    is_shift = (passage >= TIME_SHIFT_FIRST_ID) & (passage <= _TS_LAST_ID)
    shifted = np.clip(passage + move, TIME_SHIFT_FIRST_ID, _TS_LAST_ID)
    passage = np.where(hit & is_shift, shifted, passage)
    is_vel = passage >= VELOCITY_FIRST_ID
    louder = np.clip(passage + np.sign(move), VELOCITY_FIRST_ID, VOCAB_SIZE - 1)
    passage = np.where(hit & is_vel, louder, passage)
    return np.concatenate([body[:cut], passage]).astype(np.int32)


class TrainBatches:
    """``batch(step)`` -> int32 ``[batch_size, seq_len]`` (seq_len = N + 1), deterministic."""

    def __init__(
        self,
        split: TokenSplit,
        *,
        seq_len: int,
        num_targets: int,
        batch_size: int,
        seed: int,
        augmentation: Augmentation = Augmentation(),
        repeats: Repeats = NO_REPEATS,
        infill: Infill = NO_INFILL,
        sketches: Sketches = NO_SKETCHES,
    ):
        if len(split) == 0:
            raise ValueError("the training split has no pieces")
        self.split = split
        self.seq_len = seq_len
        self.num_targets = num_targets
        self.batch_size = batch_size
        self.seed = seed
        self.aug = augmentation
        self.repeats = repeats
        self.infill = infill
        self.sketches = sketches
        lengths = np.diff(split.offsets).astype(np.float64) + 1  # + SOS
        self.piece_p = lengths / lengths.sum()  # every token equally likely to be a target

    def row(self, rng: np.random.Generator) -> np.ndarray:
        k = int(rng.choice(self.piece_p.size, p=self.piece_p))
        piece = self.split.piece(k)
        length = piece.size + 1  # with SOS
        # The crop ends at `end` (exclusive) in [SOS] + piece; at least num_targets + 1 tokens
        # (or the whole piece when it is shorter). An infilling crop's gap starts there.
        lo = min(self.num_targets + 1, length)
        end = int(rng.integers(lo, length + 1))
        semitones = (
            int(rng.integers(-self.aug.max_transpose, self.aug.max_transpose + 1))
            if self.aug.max_transpose
            else 0
        )
        stretch = float(rng.uniform(self.aug.min_stretch, self.aug.max_stretch))
        fim = self.infill.share > 0 and rng.random() < self.infill.share
        # Take a little more than needed before augmenting: stretching and dropped notes change
        # the length; the crop is cut to seq_len afterwards, keeping its end.
        raw = int(self.seq_len * max(1.0, 1.0 / self.aug.min_stretch) * 1.05) + 16
        start = max(0, end - raw)
        after = self.infill.post_tokens if fim else 0
        body = np.asarray(piece[max(0, start - 1) : end - 1 + after], np.int32)
        if start == 0:
            body = np.concatenate([[SOS_ID], body]).astype(np.int32)
        gap_start = int(infill.time_before(body)[end - start]) if fim else 0
        if self.aug.enabled:
            body = augment(body, semitones, stretch)
            gap_start = int(np.floor(gap_start * stretch + 0.5))
        if fim:
            body = self._infill_crop(body, gap_start, rng)
        else:
            body = body[-self.seq_len :]
        if not fim and self.repeats.share > 0 and rng.random() < self.repeats.share:
            body = replay(body, rng, self.repeats)
        if not fim and self.sketches.share > 0 and rng.random() < self.sketches.share:
            body = self.sketches.view(body, rng)[-self.seq_len :]  # fewer VELOCITYs: shorter
        out = np.full(self.seq_len, PAD_ID, np.int32)
        out[self.seq_len - body.size :] = body
        return out

    def _infill_crop(self, body: np.ndarray, gap_start: int, rng: np.random.Generator):
        """An infilling row from ``body`` with its gap starting at music time ``gap_start``:
        the prompt, then the real middle up to a random point; the plain crop ending at the
        gap's start when the piece has no music after it."""
        steps = int(rng.integers(self.infill.min_gap_steps, self.infill.max_gap_steps + 1))
        a, b = infill.span(body, gap_start, gap_start + steps)
        steps = infill.gap_steps(body, a, b)
        if a >= body.size or steps < 1:
            return body[:a][-self.seq_len :]
        suffix = body[b : b + int(rng.integers(0, infill.MAX_SUFFIX_TOKENS + 1))]
        room = self.seq_len - len(infill.gap_shift_ids(steps)) - infill.HEADER_TOKENS - 1
        room -= len(infill.join_part(suffix, self.infill.layout))
        whole = self.infill.whole > 0 and rng.random() < self.infill.whole
        e = b if whole else int(rng.integers(a + 1, b + 1))
        e = min(e, a + room // 2)  # a middle never crowds the part before it out of view
        head = infill.prompt(body[:a], suffix, steps, self.seq_len - (e - a), self.infill.layout)
        return np.concatenate([head, body[a:e]]).astype(np.int32)

    def batch(self, step: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return np.stack([self.row(rng) for _ in range(self.batch_size)])


@dataclasses.dataclass(frozen=True)
class EvalWindow:
    piece: int
    end: int  # inputs are seq[max(0, end - context) : end]; targets seq[end - n + 1 : end + 1]
    n_targets: int


def eval_windows(lengths: np.ndarray, num_latents: int) -> list[EvalWindow]:
    """Windows that score every token of every piece exactly once.

    A piece of L tokens is scored as ``[SOS] + ids``: targets are positions 1..L. Window k ends at
    input position e = min((k + 1) * M, L) (exclusive) and scores the targets at positions
    (k * M, e], each with all the preceding context the model takes (up to N inputs).
    """
    out = []
    for p, length in enumerate(np.asarray(lengths).tolist()):
        scored = 0
        while scored < length:
            end = min(scored + num_latents, length)
            out.append(EvalWindow(p, end, end - scored))
            scored = end
    return out


def window_arrays(
    split: TokenSplit, windows: list[EvalWindow], context: int, num_latents: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs [W, context], targets [W, M], mask [W, M]) for a list of windows.

    Inputs are left-padded; the last M input positions are the latents, whose targets are the
    next tokens; only the window's own new targets are unmasked.
    """
    w = len(windows)
    inputs = np.full((w, context), PAD_ID, np.int32)
    targets = np.full((w, num_latents), PAD_ID, np.int32)
    mask = np.zeros((w, num_latents), bool)
    for i, win in enumerate(windows):
        piece = split.piece(win.piece)
        # seq = [SOS] + piece; seq[j] for j >= 1 is piece[j - 1].
        lo = max(0, win.end - context)
        seq_in = np.asarray(piece[max(0, lo - 1) : win.end - 1], np.int32)
        if lo == 0:
            seq_in = np.concatenate([[SOS_ID], seq_in])
        inputs[i, context - seq_in.size :] = seq_in
        # Targets of the last M inputs: seq[end - M + 1 .. end] = piece[end - M .. end - 1].
        t_lo = win.end - num_latents
        tgt = np.asarray(piece[max(0, t_lo) : win.end], np.int32)
        targets[i, num_latents - tgt.size :] = tgt
        mask[i, num_latents - win.n_targets :] = True
    return inputs, targets, mask
