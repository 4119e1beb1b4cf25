"""Infilling: regenerate a span of a piece with both sides in view (the CLI, batch and web app).

    from perceiver_midi.app.core.infill import Gap, infill_piece
    from perceiver_midi.app.core.pipeline import Settings

    model = load_model(default_checkpoint("infill"))
    for f in infill_piece(model, "sketch.mid", Gap(30, 38), Settings(variations=3, seed=7)):
        write_infill(f, "out", "sketch")   # out/sketch_infill_v1.mid (+ _middle.mid, + audio)

The gap's edges move to the piece's events (``model/infill.py``: the first event at or after
each edge; ``Infilled.start``/``end`` are the edges used). The model reads the piece after the
gap, the gap's music time and the piece before it, and writes the middle with the same sampler,
settings and controls as a continuation (``settings.seconds`` is replaced by the gap's length;
EOS is never sampled). The middle's last TIME_SHIFT is cut so that it ends exactly at the gap's
end, and every note still sounding there is closed there: nothing hangs into the part after the
gap. The piece outside the gap keeps its notes (pitches, onsets, ends, velocities), except the
notes sounding across the gap's start: the middle ends them, as a pianist would.

Seeds: variation v uses ``settings.seed + v - 1``, as a continuation does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.pipeline import (
    MAX_PRIME_SECONDS,
    MAX_TOKENS_PER_SECOND,
    OutputOptions,
    Settings,
    Window,
    _with_velocity,
    as_float,
    audio_bytes,
    context_tokens,
    cut_prime,
    heard,
    plays,
    sample_continuations,
    variation_seeds,
    write_files,
)
from perceiver_midi.model import infill as layout
from perceiver_midi.model.sampler import sounding_pitches
from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer.decode import Note, decode_notes, midi_bytes, notes_to_pretty_midi

MAX_GAP_SECONDS = 12.0  # the longest span regenerated at once (training gaps: 1-12 s)
CONTEXT_SECONDS = 3.0  # the web app's preview: this much before and after the middle


@dataclasses.dataclass(frozen=True)
class Gap:
    """The span to regenerate, in seconds of the piece: ``start`` < ``end``, at most
    ``MAX_GAP_SECONDS`` long. Checked against the piece by :func:`infill_piece`."""

    start: float
    end: float

    def __post_init__(self):
        start = as_float(self.start, "infill range start", 0, MAX_PRIME_SECONDS)
        end = as_float(self.end, "infill range end", 0, MAX_PRIME_SECONDS)
        if not end > start:
            raise UserError(f"infill range end ({end:g} s) must be after its start ({start:g} s)")
        if end - start > MAX_GAP_SECONDS:
            raise UserError(
                f"infill range {start:g}:{end:g} is {end - start:g} s long; at most "
                f"{MAX_GAP_SECONDS:g} s can be regenerated at once"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)

    @classmethod
    def parse(cls, text: str) -> Gap:
        """``"START:END"`` in seconds, e.g. ``"30:38"``."""
        parts = str(text).split(":")
        try:
            if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
                raise ValueError
            start, end = float(parts[0]), float(parts[1])
        except ValueError:
            raise UserError(
                f"infill range must look like START:END in seconds, got {text!r}"
            ) from None
        return cls(start, end)

    def describe(self) -> str:
        return f"{self.start:g}:{self.end:g}"

    def to_dict(self) -> dict[str, float]:
        return {"start": self.start, "end": self.end}


@dataclasses.dataclass(frozen=True, eq=False)
class Infilled:
    """One regenerated span: ``piece`` (ids, no SOS) with ``piece[a:b]`` replaced by
    ``middle`` (ids that end at the gap's end with every note closed)."""

    piece: np.ndarray
    a: int
    b: int
    middle: np.ndarray
    seed: int
    variation: int
    sample_seconds: float
    stop: str  # "seconds" (the gap filled), "tokens" (the token budget ran out first)

    @property
    def start(self) -> float:
        """The gap's start (seconds; the first event at or after the asked start)."""
        return float(layout.time_before(self.piece)[self.a]) / C.STEPS_PER_SECOND

    @property
    def end(self) -> float:
        return float(layout.time_before(self.piece)[self.b]) / C.STEPS_PER_SECOND

    @property
    def piece_seconds(self) -> float:
        return float(layout.time_before(self.piece)[-1]) / C.STEPS_PER_SECOND

    @property
    def tokens(self) -> int:
        return int(self.middle.size)

    def notes(self) -> list[Note]:
        """The whole piece: the part before the gap and the middle, then the piece's own notes
        from the gap's end on."""
        before = decode_notes(np.concatenate([self.piece[: self.a], self.middle]))
        after = [n for n in decode_notes(self.piece) if n.start >= self.end - 1e-9]
        return sorted(before + after, key=lambda n: (n.start, n.pitch))

    def middle_notes(self) -> list[Note]:
        """The new middle alone, from time 0."""
        return decode_notes(_with_velocity(self.piece[: self.a], self.middle))

    def midi(self):
        return notes_to_pretty_midi(self.notes())

    def middle_midi(self):
        return notes_to_pretty_midi(self.middle_notes())

    def context_midi(self, seconds: float = CONTEXT_SECONDS):
        """``seconds`` before the gap, the new middle and ``seconds`` after it, from time 0
        (notes cut to that stretch): how the web app lets a user hear a variation in place."""
        lo, hi = max(0.0, self.start - seconds), self.end + seconds
        clip = [
            Note(n.pitch, n.velocity, max(n.start, lo) - lo, min(n.end, hi) - lo)
            for n in self.notes()
            if n.end > lo and n.start < hi
        ]
        return notes_to_pretty_midi([n for n in clip if n.end > n.start])


def _close_at_gap_end(before: np.ndarray, ids: np.ndarray, steps: int) -> np.ndarray:
    """``ids`` padded with TIME_SHIFTs to ``steps`` of music time (when the token budget ran
    out first) and a NOTE_OFF for every note still sounding after ``before`` + ``ids``."""
    ids = ids[(ids != C.EOS_ID) & (ids != C.PAD_ID)]
    short = steps - int(layout.shift_steps(ids).sum())
    pad = layout.gap_shift_ids(short) if short > 0 else []
    sounding = sounding_pitches(np.concatenate([before, ids]))
    offs = [C.NOTE_OFF_FIRST_ID + p for p in range(C.NUM_PITCHES) for _ in range(sounding[p])]
    return np.concatenate([ids, pad, offs]).astype(np.int32)


def plan_gap(model, piece: np.ndarray, gap: Gap, settings: Settings, label: str = "piece"):
    """(a, b, steps, prompt, settings) of ``gap`` in ``piece`` (ids, no SOS); UserError for a
    gap the piece cannot have."""
    if not getattr(model.config, "infill", False):
        raise UserError(
            "this checkpoint was not trained to infill; use the shipped infilling model "
            "(the default of `perceiver-midi infill`) or one trained with --set infill=True"
        )
    total = layout.time_before(piece)[-1] / C.STEPS_PER_SECOND
    if gap.start >= total:
        raise UserError(
            f"{label}: infill range starts at {gap.start:g} s, at or after the piece's end "
            f"({total:.2f} s)"
        )
    start, end = (round(t * C.STEPS_PER_SECOND) for t in (gap.start, gap.end))
    a, b = layout.span(piece, start, end)
    steps = layout.gap_steps(piece, a, b)
    if steps < 1:
        raise UserError(f"{label}: infill range {gap.describe()} holds no music time")
    seconds = steps / C.STEPS_PER_SECOND
    # The prompt and the whole middle stay in the sampler's view (its window never slides the
    # gap's length and the part after it out): the middle gets at most half of it.
    window = context_tokens(model, settings.latents) + 1  # the sampler's view, SOS included
    budget = min(max(64, math.ceil(seconds * MAX_TOKENS_PER_SECOND)), window // 2)
    gap_settings = settings.replace(seconds=seconds, tokens=budget, stop_at_eos=False)
    prompt = _gap_prompt(model, piece, a, b, steps, window - budget)
    return a, b, steps, prompt, gap_settings


def _gap_prompt(model, piece, a, b, steps, size, before=None, after=None) -> np.ndarray:
    """The infilling prompt of ``size`` tokens for the gap [a, b) of ``piece``, from ``before``
    and ``after`` (default: the piece's own parts; the model may hear them humanized)."""
    before = piece[:a] if before is None else before
    after = piece[b:] if after is None else after
    prefix = np.concatenate([[C.SOS_ID], before]).astype(np.int32)
    return layout.prompt(prefix, after, steps, size, model.config.infill_layout)


def infill_piece(
    model,
    source,
    gap: Gap,
    settings: Settings,
    *,
    name: str | None = None,
    callback: Callable[[Any], Any] | None = None,
    length_bucket: int = 0,
) -> list[Infilled]:
    """``settings.variations`` new middles for ``gap`` of ``source`` (a MIDI path, bytes,
    PrettyMIDI, NoteSequence or id array), sampled as one batch (``length_bucket``: the
    sampler's; the notes do not depend on it)."""
    label = name or (source if isinstance(source, str) else "piece")
    piece = cut_prime(source, Window.whole(), name=name).window
    n = int(settings.variations)
    return infill_items(
        model, piece, gap, settings, variation_seeds(settings.seed, n), range(1, n + 1),
        label=label, callback=callback, length_bucket=length_bucket,
    )  # fmt: skip


def infill_items(
    model,
    piece: np.ndarray,
    gap: Gap,
    settings: Settings,
    seeds: Sequence[int],
    variations: Sequence[int],
    *,
    label: str = "piece",
    callback: Callable[[Any], Any] | None = None,
    length_bucket: int = 0,
) -> list[Infilled]:
    """New middles for ``gap`` of ``piece`` (ids), one per seed, in one sampler call (the batch
    generator's items; ``variations`` label them)."""
    a, b, steps, prompt, gap_settings = plan_gap(model, piece, gap, settings, label)
    prompts = [prompt] * len(seeds)
    if plays(settings.humanize, piece):  # a sketch's parts heard played, per variation
        size = context_tokens(model, settings.latents) + 1 - gap_settings.tokens  # plan_gap's
        prompts = [
            _gap_prompt(model, piece, a, b, steps, size, *heard([piece[:a], piece[b:]], seed, True))
            for seed in seeds
        ]
    conts = sample_continuations(
        model, prompts, list(seeds), gap_settings, callback=callback,
        variations=list(variations), length_bucket=length_bucket,
    )  # fmt: skip
    out = []
    for c in conts:
        middle = _close_at_gap_end(piece[:a], c.ids, steps)
        stop = "seconds" if c.stop == "seconds" else "tokens"
        out.append(Infilled(piece, a, b, middle, c.seed, c.variation, c.sample_seconds, stop))
    return out


def infill_file_names(stem: str, variation: int, options: OutputOptions) -> dict[str, str]:
    names = {
        "midi": f"{stem}_infill_v{variation}.mid",
        "middle_midi": f"{stem}_infill_v{variation}_middle.mid",
    }
    if options.audio != "none":
        names["audio"] = f"{stem}_infill_v{variation}.{options.audio}"
        names["middle_audio"] = f"{stem}_infill_v{variation}_middle.{options.audio}"
    return names


def infill_bytes(f: Infilled, options: OutputOptions) -> dict[str, bytes]:
    """The whole piece and the middle alone, as MIDI (+ the audio of exactly those files)."""
    data = {"midi": midi_bytes(f.midi()), "middle_midi": midi_bytes(f.middle_midi())}
    if options.audio != "none":
        data["audio"], _ = audio_bytes(data["midi"], options)
        data["middle_audio"], _ = audio_bytes(data["middle_midi"], options)
    return data


def write_infill(f: Infilled, out_dir, stem: str, options: OutputOptions | None = None):
    """Writes ``out_dir/<stem>_infill_v<variation>.mid`` (the whole piece), ``..._middle.mid``
    (the new middle alone) and their audio, atomically; returns {kind: Path}."""
    options = options or OutputOptions()
    names = infill_file_names(stem, f.variation, options)
    return write_files(out_dir, names, infill_bytes(f, options))
