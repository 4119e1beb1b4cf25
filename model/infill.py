"""Infilling prompts: regenerate a span [A, B) of a piece with both sides in view (numpy; no JAX).

One layout serves the training crops (``model/data.py``) and the app (``app/core/infill.py``), after
Bavarian et al. 2022 ("Efficient Training of Language Models to Fill in the Middle", SPM order)::

    [SOS, GAP, <the gap's length as TIME_SHIFTs>, SUFFIX, <tokens from B on>,
     PREFIX, <tokens before A>, MIDDLE] -> the model writes the middle

The part before the gap comes last, so the middle continues it exactly as a continuation would;
the part after the gap and the gap's music time come first, where every latent can read them.
With ``join_tokens`` J > 0 (``Config.infill_join``) the first J tokens of the part after the gap
come again, after a second SUFFIX, just before MIDDLE::

    [..., PREFIX, <tokens before A>, SUFFIX, <the first J tokens from B on>, MIDDLE] -> the middle

There the middle's latents see them in their own window: the one cross-attention reads the far
copy about as much as any other token (``benchmarks/infill_attention.py``), not the notes the
middle must lead into. That repeat stands between the part before the gap and the middle the
middle continues, which costs the middle's first tokens (0.2-0.4 nats/token in the first
quarter of the gap). With ``tail`` K > 0 (``Config.infill_tail``) the last K tokens before A
move after the repeat, behind a second PREFIX, so the middle again continues the music it
follows, with the repeat still in the window::

    [..., PREFIX, <tokens before A but the last K>, SUFFIX, <the first J tokens from B on>,
     PREFIX, <the last K tokens before A>, MIDDLE] -> the middle

``Layout`` (J, K) is the model's (``Config.infill_layout``); training crops and every surface's
prompts take it from there.

Edges are token positions. Each token's event happens at the sum of the TIME_SHIFTs before it
(``time_before``); the gap starts at the first token whose time is >= A and ends at the first
whose time is >= B (``span``), so both edges fall just after a TIME_SHIFT and the middle's own
TIME_SHIFTs add up to the gap's length exactly. Notes that sound across A are closed by the
middle (their NOTE_OFFs are the middle's); notes of the part after B keep their onsets, and a
NOTE_OFF there whose NOTE_ON was in the gap is just context.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from perceiver_midi.model.vocab import (
    FIM_GAP_ID,
    FIM_MIDDLE_ID,
    FIM_PREFIX_ID,
    FIM_SUFFIX_ID,
    SOS_ID,
)
from perceiver_midi.tokenizer.windows import shift_steps, shift_tokens

MAX_SUFFIX_TOKENS = 1024  # of the part after the gap, the prompt keeps this many at most
MAX_JOIN_TOKENS = 256  # the repeated start of the part after the gap (``Layout.join``), at most
MAX_TAIL_TOKENS = 512  # the part before the gap's end moved after that repeat (``Layout.tail``)
HEADER_TOKENS = 4  # SOS, GAP, SUFFIX, PREFIX (+ MIDDLE) around the gap's TIME_SHIFTs


def time_before(ids: np.ndarray) -> np.ndarray:
    """int64 [n + 1]: the music time (10 ms steps) at each token, and at the end."""
    return np.concatenate([[0], np.cumsum(shift_steps(ids))])


def span(ids: np.ndarray, start_step: int, end_step: int) -> tuple[int, int]:
    """Token positions (a, b) of the gap [start_step, end_step): the first token at or after
    each time (``len(ids)`` when none is)."""
    times = time_before(ids)[:-1]
    a = int(np.searchsorted(times, start_step, side="left"))
    b = int(np.searchsorted(times, end_step, side="left"))
    return a, max(a, b)


def gap_steps(ids: np.ndarray, a: int, b: int) -> int:
    """The music time of tokens ``ids[a:b]`` (the gap's exact length), in 10 ms steps."""
    return int(shift_steps(np.asarray(ids)[a:b]).sum())


def gap_shift_ids(steps: int) -> list[int]:
    """A length as TIME_SHIFT ids, as the encoder writes a pause: full seconds, then the rest."""
    if steps < 1:
        raise ValueError(f"a gap must last at least 10 ms, got {steps} steps")
    return shift_tokens(int(steps))


class Layout(NamedTuple):
    """Where an infilling prompt shows the part after the gap a second time (see above)."""

    join: int = 0  # J: its first J tokens again, inside the window (0: not at all)
    tail: int = 0  # K: with J, the last K tokens before the gap come after that repeat

    def check(self) -> Layout:
        if not 0 <= self.join <= MAX_JOIN_TOKENS:
            raise ValueError(f"infill_join must be in [0, {MAX_JOIN_TOKENS}], got {self.join}")
        if not 0 <= self.tail <= MAX_TAIL_TOKENS:
            raise ValueError(f"infill_tail must be in [0, {MAX_TAIL_TOKENS}], got {self.tail}")
        if self.tail and not self.join:
            raise ValueError("infill_tail needs infill_join")
        return self


def join_part(suffix: np.ndarray, layout: Layout) -> list[int]:
    """What ``layout`` adds to the prompt's part before the gap: SUFFIX and the first J tokens
    of ``suffix``, then PREFIX when K > 0 (nothing for J = 0)."""
    layout.check()
    if not layout.join:
        return []
    tail = [FIM_PREFIX_ID] if layout.tail else []
    return [FIM_SUFFIX_ID, *np.asarray(suffix, np.int32)[: layout.join].tolist(), *tail]


def prompt(
    prefix: np.ndarray,
    suffix: np.ndarray,
    steps: int,
    max_len: int,
    layout: Layout = Layout(),  # noqa: B008 (an immutable tuple)
) -> np.ndarray:
    """The infilling prompt of at most ``max_len`` tokens: ``suffix`` cut to its first
    ``MAX_SUFFIX_TOKENS`` (and to half the room), ``prefix`` to its last tokens (what is left);
    ``layout``: the start of ``suffix`` again before MIDDLE (see above)."""
    shifts = gap_shift_ids(steps)
    head = [SOS_ID, FIM_GAP_ID, *shifts, FIM_SUFFIX_ID]
    join = join_part(suffix, layout)
    room = max_len - len(head) - 2 - len(join)  # PREFIX, MIDDLE
    if room < 0:
        raise ValueError(f"an infilling prompt needs more than {max_len} tokens")
    suffix = np.asarray(suffix, np.int32)[: min(MAX_SUFFIX_TOKENS, room // 2)]
    room -= suffix.size
    prefix = np.asarray(prefix, np.int32)
    prefix = prefix[prefix.size - room :] if room < prefix.size else prefix
    cut = max(0, prefix.size - layout.tail)
    parts = [head, suffix, [FIM_PREFIX_ID], prefix[:cut], join, prefix[cut:], [FIM_MIDDLE_ID]]
    return np.concatenate(parts).astype(np.int32)


def music_before_middle(ids: np.ndarray) -> np.ndarray:
    """The tokens of ``ids`` that the middle continues: after the first PREFIX sentinel, without
    the repeated start of the part after the gap (``Layout``: SUFFIX up to MIDDLE, or up to and
    with the second PREFIX); all of ``ids`` for a plain prompt. The sampler's running state
    (sounding notes, velocity) starts from these, not from the part after the gap."""
    ids = np.asarray(ids)
    where = np.nonzero(ids == FIM_PREFIX_ID)[0]
    if not where.size:
        return ids
    rest = ids[where[0] + 1 :]
    join = np.nonzero(rest == FIM_SUFFIX_ID)[0]
    if not join.size:
        return rest
    ends = np.nonzero(np.isin(rest[join[0] :], [FIM_PREFIX_ID, FIM_MIDDLE_ID]))[0]
    if not ends.size:
        return rest[: join[0]]
    end = join[0] + ends[0]
    resume = end + 1 if rest[end] == FIM_PREFIX_ID else end  # MIDDLE stays; PREFIX goes
    return np.concatenate([rest[: join[0]], rest[resume:]])
