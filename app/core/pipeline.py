"""The one pipeline every surface calls: prime -> prime window -> ids -> sampler -> MIDI -> audio.

    from perceiver_midi.app.core.pipeline import Settings, Window, continue_prime, write_outputs
    from perceiver_midi.model.checkpoint import load_model

    model = load_model("checkpoints/maestro-cpu-infill")
    settings = Settings(seconds=20, variations=2, seed=7, window=Window.last_seconds(20))
    for c in continue_prime(model, "sketch.mid", settings):
        write_outputs(c, "out", "sketch")          # out/sketch_v1.mid + out/sketch_v1.wav

The CLI (``continue``, ``generate``), batch generation and the web app all go through
:func:`sample_continuations`, so the same seed and settings give the same notes everywhere.

Seeds: variation ``v`` (1-based) of ``continue_prime`` is sampled with seed
``settings.seed + v - 1`` (the sampler's own rule for a batch with one int seed). Batch generation
passes one seed per item.

Prime handling:
  * the window (last N seconds, last N tokens, a start..end range, or the whole prime) is cut on
    event boundaries by the tokenizer (``cut_last_seconds`` / ``cut_last_tokens`` / ``cut_range``);
  * a window without any NOTE_ON is refused with a one-line :class:`UserError`;
  * a window longer than the model's context is cut to the last tokens the sampler can see
    (:func:`context_tokens`), so the ``full`` MIDI is exactly what the model was given;
  * no prime at all (``None``) starts from SOS alone.

Budgets: ``seconds`` stops a continuation once its music time reaches the budget; the TIME_SHIFT
that crosses it is shortened so that the music time is exactly ``seconds`` (a note still
sounding at the end is closed there). ``tokens`` is a token budget. With only ``seconds`` the
token budget is ``seconds * MAX_TOKENS_PER_SECOND`` (a guard against a model that never advances
time). EOS ends a continuation early unless ``stop_at_eos=False`` (then EOS is never sampled).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from perceiver_midi.app.core import controls, render
from perceiver_midi.app.core.errors import UserError
from perceiver_midi.model.sampler import (
    MAX_GUIDANCE,
    SampleOptions,
    StopSampling,
    prompt_window,
    sample,
)
from perceiver_midi.tokenizer import (
    MidiError,
    atomic_write_bytes,
    cut_last_seconds,
    cut_last_tokens,
    cut_range,
    decode,
    encode,
    midi_bytes,
    music_seconds,
)
from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer.retime import humanize as humanize_ids
from perceiver_midi.tokenizer.retime import looks_quantized
from perceiver_midi.tokenizer.windows import shift_steps

DEFAULT_SECONDS = 20.0
DEFAULT_PRIME_SECONDS = 20.0
MAX_TOKENS_PER_SECOND = 200  # dense MAESTRO passages stay well under this
MAX_SEED = 2**32 - 1

# The bounds of every request, on every surface (CLI, batch rows, web app, /continue API). A value
# past one is refused with one line before any work starts.
MAX_SECONDS = 600.0  # music time of one continuation
MAX_NOTE_SECONDS = MAX_SECONDS  # the longest-note limit (max_note_seconds)
# Notes sounding this long are ended (0/None: no limit). Measured with benchmarks/quality.py on 32
# validation primes (results/experiments/quality_guard-S*_r1.json, round-1 model): polyphony 1.66x
# the real continuations' without a limit, 1.51x at 7 s, 1.32x at 4 s; notes held > 8 s 2.25% -> 0;
# density unchanged. Real MAESTRO continuations hold 0.8% of their notes longer than 4 s. With the
# round-7 model, guidance 0.7, the cap of 12 and top-p 0.97 (below), 3 s scores best (overall
# 0.876 vs 0.840 at 4 s; 32 validation primes x 2 draws, benchmarks/results/experiments/
# quality_sampler_*.json): at 4 s, 7% of the generated notes outlast 4 s (real: 0.8%). With top-p
# 0.93, 3 s loops instead: one prime repeats a single note for 20 s (the two-pitch run feature).
DEFAULT_MAX_NOTE_SECONDS = 3.0
# No new note while this many sound (0/None: no limit; the bound is app/core/controls.py's).
# Measured with benchmarks/quality.py on the same 32 primes, round-1 model, with the 4 s limit above
# (results/experiments/quality_polycap-*_r1.json): polyphony 1.32x the real continuations' with no
# cap, 1.15x at 16, 1.10x at 12, 0.95x at 10; density 1.04x, 0.96x, 0.97x, 0.91x. 16 is the loosest
# that meets the +-30% bars: real continuations have >= 16 notes sounding 2.2% of the time (>= 12:
# 6.2%; the sustain pedal holds many). With context guidance (below) the round-7 model holds more
# notes: 1.13x uncapped on validation primes, 1.35x on test primes (over the bar); 12 brings them
# to 1.02x / 1.15x and gives the best overall score measured (benchmarks/results/experiments/
# quality_guided_maestro-cpu-infill_g0.7_k0_cap12.json, quality_test_round7-infill_guided0.7_cap12).
DEFAULT_MAX_POLYPHONY = 12
# Nucleus sampling by default (1 = off). Measured with benchmarks/quality.py, shipped round-3 model
# with the two limits above, 32 validation primes, polyphony / density ratios to the real
# continuations per draw (seeds 0, 100, 200; results/experiments/quality_round3_top-p*.json): top-p
# 1 1.53 1.52 1.42 / 1.05 1.01 1.07 (notes held long: p90 duration 1.8x); 0.97: 1.27 1.43 / 1.08
# 1.10; 0.95: 1.23 1.28 1.34 / 1.15 1.15 1.08; 0.93: 1.10 1.03 0.99 / 1.15 1.06 0.91 (mean feature
# overlap 0.836, the best); 0.90: 0.86 / 1.02 (overlap 0.798). 0.93 meets the bars in every draw,
# and on 32 held-out test primes (results/experiments/quality_round3_test-split.json: 1.19 / 0.94).
# Round 7 (the default 2026-12-07 until round 10) with guidance 0.7, the cap of 12, the 3 s limit,
# 32 validation primes x 2 draws, the 19-feature overall score (benchmarks/results/experiments/
# quality_sampler_*.json): top-p 0.93 0.847 (7 of 64 continuations stuck on two pitches for 30
# or more notes, distinct pitches 0.75x, self-repetition 1.37x), 0.95 0.869 (3 stuck), 0.97
# 0.876 (2 stuck; distinct pitches 0.92x, self-repetition 0.60x, prime reuse 0.56x); top-p 1
# 0.821 and min-p 0.035 0.812 (18 features, 4 s limit). Round 10 at the same defaults:
# results/quality.json (the model card compares the two).
DEFAULT_TOP_P = 0.97
# min-p sampling (0 = off): keep tokens at least this times as likely as the most likely one.
DEFAULT_MIN_P = 0.0
# Context guidance (0 = off; the sampler's SampleOptions.guidance, at most MAX_GUIDANCE): tokens
# are drawn from full + G x (full - short), where the short rows see only the last
# guidance_tokens of the prime (0: none of it) and what was generated since. Doubles the
# sampling work. Measured with benchmarks/quality.py (--draws 2, 32 primes) on the round-7 model
# with the cap of 12 above: overall score 0.848 on validation primes (0.796 unguided, 0.820 at
# G 1), 0.796 on test primes; figured primes keep 0.42 of their figure (0.23 unguided;
# benchmarks/continuing.py). The README's table has every arm.
DEFAULT_GUIDANCE = 0.7
DEFAULT_GUIDANCE_TOKENS = 0
# What the model hears of a prime that looks like a sketch from a DAW or notation program
# (tokenizer.retime.looks_quantized: onsets on one grid and at most two loudness levels): "auto"
# plays it to the model as a pianist might (tokenizer.retime.humanize: onsets and ends moved by up
# to 20 ms, loudness by up to two bins, drawn from the variation's seed; the files keep the prime
# as given), "on" does so for every prime, "off" never. Measured with benchmarks/continuing.py
# --draws 4 on round 7 (results/continuing.json): the model, trained on performances, keeps 0.26 of
# a quantized figure and 0.50 of the same figures played (timing swapped between the halves,
# --flip-timing: 0.11 and 0.55); heard humanized, the quantized figures keep 0.47 (flipped: 0.44)
# and figure kept over all 12 primes goes 0.38 -> 0.48 (two draws: 0.46 -> 0.52). No window of
# MAESTRO's validation and test pieces looks quantized (0 of 1,199; --maestro-windows), so real
# primes are continued exactly as before. The README's example (on the grid to 8 ms, a pianist's
# loudness) keeps more of its figure as it is: 0.33 over 8 variations, 0.19 humanized ("on").
# Infilling hears the parts before and after the gap so (--infill, 8-12 s of each figured prime):
# the quantized primes' new middles keep 0.42 of the figure, 0.28 unhumanized.
HUMANIZE_CHOICES = ("auto", "on", "off")
HUMANIZE_STREAM = 0x48554D  # the humanizing draws' own stream beside the variation's seed
DEFAULT_HUMANIZE = "auto"
MAX_TOKENS = 2**17  # token budget of one continuation (MAX_SECONDS at MAX_TOKENS_PER_SECOND fits)
MAX_VARIATIONS = 16  # continuations of one prime
MAX_TOP_K = C.VOCAB_SIZE
MAX_TEMPERATURE = 100.0
MAX_LATENTS = 2**16  # a checkpoint's own number of latents is checked when it samples
MAX_PRIME_TOKENS = 2**24
MAX_GUIDANCE_TOKENS = 2**16  # a model sees at most its own context of them
MAX_PRIME_SECONDS = 24 * 3600.0
# The web app and its /continue API serve many users from one process: tighter bounds.
WEB_MAX_SECONDS = 120.0
WEB_MAX_VARIATIONS = 4
# Its sampler is compiled at start for this token budget (the longest request's), for every batch
# bucket of 1..WEB_MAX_VARIATIONS and every latents choice: no request waits for a compilation.
WEB_LENGTH_BUCKET = math.ceil(WEB_MAX_SECONDS * MAX_TOKENS_PER_SECOND)


def as_int(value, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int (a whole float like 3.0 or "3" is fine) inside ``lo..hi``, else a
    one-line :class:`UserError` naming ``what``. nan, inf, 2.5 and "x" are refused."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be a whole number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or not f.is_integer():
        raise UserError(f"{what} must be a whole number, got {value!r}")
    n = int(value) if isinstance(value, int) else int(f)
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise UserError(f"{what} must be in {_span(lo, hi)}, got {n}")
    return n


def as_float(value, what: str, lo: float | None = None, hi: float | None = None,
             *, lo_open: bool = False) -> float:  # fmt: skip
    """``value`` as a finite float inside ``lo..hi`` (``lo_open``: strictly above ``lo``), else a
    one-line :class:`UserError` naming ``what``."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be a number, got {value!r}")
    try:
        f = float(value)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise UserError(f"{what} must be a finite number, got {value!r}")
    low_bad = lo is not None and (f <= lo if lo_open else f < lo)
    if low_bad or (hi is not None and f > hi):
        raise UserError(f"{what} must be in {_span(lo, hi, lo_open)}, got {f:g}")
    return f


def _span(lo, hi, lo_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"<= {hi:g}"


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Window:
    """Which part of the prime the model is given.

    kind: ``"last_seconds"`` (the last ``seconds`` of music), ``"last_tokens"`` (the last
    ``tokens`` ids), ``"range"`` (music time ``start``..``end`` seconds; ``end=None``: to the end;
    the continuation then starts at ``end``), or ``"all"`` (the whole prime).
    max_tokens: then at most the last ``max_tokens`` ids of that window ("prime tokens" on every
    surface: the CLI's ``--prime-tokens`` with another window option, the web app's slider).
    """

    kind: str = "last_seconds"
    seconds: float | None = DEFAULT_PRIME_SECONDS
    tokens: int | None = None
    start: float | None = None
    end: float | None = None
    max_tokens: int | None = None

    def __post_init__(self):
        def fix(name, value):
            object.__setattr__(self, name, value)

        if self.kind == "last_seconds":
            fix("seconds", as_float(self.seconds, "prime seconds", 0, MAX_PRIME_SECONDS,
                                    lo_open=True))  # fmt: skip
        elif self.kind == "last_tokens":
            fix("tokens", as_int(self.tokens, "prime tokens", 1, MAX_PRIME_TOKENS))
        elif self.kind == "range":
            start = 0.0 if self.start is None else self.start
            fix("start", as_float(start, "prime range start", 0, MAX_PRIME_SECONDS))
            if self.end is not None:
                fix("end", as_float(self.end, "prime range end", 0, MAX_PRIME_SECONDS))
                if not self.end > self.start:
                    raise UserError(f"prime range end ({self.end:g} s) must be after its start")
        elif self.kind != "all":
            raise UserError(f"unknown prime window kind {self.kind!r}")
        if self.max_tokens is not None:
            fix("max_tokens", as_int(self.max_tokens, "prime tokens", 1, MAX_PRIME_TOKENS))

    def at_most(self, tokens: int | None) -> Window:
        """This window, then at most its last ``tokens`` ids (None or 0: all of it)."""
        return dataclasses.replace(self, max_tokens=tokens or None)

    @classmethod
    def last_seconds(cls, seconds: float) -> Window:
        return cls("last_seconds", seconds=seconds)

    @classmethod
    def last_tokens(cls, tokens: int) -> Window:
        return cls("last_tokens", seconds=None, tokens=tokens)

    @classmethod
    def range(cls, start: float, end: float | None = None) -> Window:
        return cls("range", seconds=None, start=start, end=end)

    @classmethod
    def whole(cls) -> Window:
        return cls("all", seconds=None)

    @classmethod
    def parse_range(cls, text: str) -> Window:
        """``"START:END"`` or ``"START:"`` (to the end), in seconds, e.g. ``"10:30"``."""
        parts = str(text).split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            start = float(parts[0]) if parts[0].strip() else 0.0
            end = float(parts[1]) if parts[1].strip() else None
        except ValueError:
            raise UserError(
                f"prime range must look like START:END in seconds, got {text!r}"
            ) from None
        return cls.range(start, end)

    @classmethod
    def from_options(cls, seconds=None, tokens=None, range_text=None) -> Window:
        """The one prime-window rule of every surface (CLI options, batch columns, ``/continue``
        parameters; None, 0 or "" = not given): ``range_text`` "START:END" or ``seconds`` (not
        both), then at most the last ``tokens`` of it; ``tokens`` alone: the last tokens of the
        piece; nothing: the last ``DEFAULT_PRIME_SECONDS``."""
        given_range = range_text is not None and str(range_text).strip() != ""
        given_seconds = seconds is not None and not (
            isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds == 0
        )
        tokens = tokens or None
        if given_range and given_seconds:
            raise UserError("prime seconds and prime range contradict each other: give one")
        if given_range:
            return cls.parse_range(str(range_text)).at_most(tokens)
        if given_seconds:
            return cls.last_seconds(seconds).at_most(tokens)
        if tokens is not None:
            return cls.last_tokens(tokens)
        return cls.last_seconds(DEFAULT_PRIME_SECONDS)

    def describe(self) -> str:
        if self.kind == "last_seconds":
            text = f"last {self.seconds:g} s"
        elif self.kind == "last_tokens":
            text = f"last {self.tokens} tokens"
        elif self.kind == "range":
            end = "end" if self.end is None else f"{self.end:g} s"
            text = f"{self.start or 0:g} s..{end}"
        else:
            text = "whole prime"
        return (
            text
            if self.max_tokens is None
            else f"{text}, at most its last {self.max_tokens} tokens"
        )

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "last_seconds":
            d = {"kind": self.kind, "seconds": self.seconds}
        elif self.kind == "last_tokens":
            d = {"kind": self.kind, "tokens": self.tokens}
        elif self.kind == "range":
            d = {"kind": self.kind, "start": self.start or 0.0, "end": self.end}
        else:
            d = {"kind": self.kind}
        return d if self.max_tokens is None else d | {"max_tokens": self.max_tokens}

    def cut(self, ids: np.ndarray) -> np.ndarray:
        """The window of ``ids`` (tokenizer cuts, on event boundaries)."""
        if self.kind == "last_seconds":
            ids = cut_last_seconds(ids, self.seconds)
        elif self.kind == "last_tokens":
            ids = cut_last_tokens(ids, int(self.tokens))
        elif self.kind == "range":
            ids = cut_range(ids, self.start or 0.0, self.end)
        if self.max_tokens is not None:
            ids = cut_last_tokens(ids, int(self.max_tokens))
        return np.asarray(ids, np.int32)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything that decides the notes of a continuation (with the model and the prime).

    seconds: music time to add (None: no time budget); tokens: token budget (None: derived from
    ``seconds``); at least one must be set; both: whichever is reached first.
    variations: continuations of the same prime, sampled as one batch (seeds seed, seed+1, ...).
    temperature (0 = greedy), top_k (0 = off), top_p (1 = off), min_p (0 = off): the sampling
    controls. guidance (0 = off) and guidance_tokens: context guidance (``DEFAULT_GUIDANCE``).
    latents: latents used while sampling (None: the model's own); the test-time compute knob.
    stop_at_eos: False never samples EOS, so the budget is always filled.
    max_note_seconds: longest note (None: no limit); a note sounding that long gets its
    NOTE_OFF before time moves further (the sampler's ``max_note_seconds``).
    pitch_range (``"48:72"``, ``"C3:C5"``), key (``"Am"``, ``"C,D,E"``), velocity_range
    (``"40:90"``) and max_polyphony (default ``DEFAULT_MAX_POLYPHONY``; None or 0: no limit): the
    musical controls (``app/core/controls.py``), held on every generated token; stored
    canonically (a (low, high) tuple, ``"A minor"``, an int or None).
    """

    seconds: float | None = DEFAULT_SECONDS
    tokens: int | None = None
    variations: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = DEFAULT_TOP_P
    min_p: float = DEFAULT_MIN_P
    guidance: float = DEFAULT_GUIDANCE
    guidance_tokens: int = DEFAULT_GUIDANCE_TOKENS
    seed: int = 0
    latents: int | None = None
    window: Window = dataclasses.field(default_factory=Window)
    stop_at_eos: bool = True
    max_note_seconds: float | None = DEFAULT_MAX_NOTE_SECONDS
    pitch_range: tuple[int, int] | None = None
    key: str | None = None
    velocity_range: tuple[int, int] | None = None
    max_polyphony: int | None = DEFAULT_MAX_POLYPHONY
    humanize: str = DEFAULT_HUMANIZE

    def __post_init__(self):
        def fix(name, value):
            object.__setattr__(self, name, value)

        if self.seconds is None and self.tokens is None:
            raise UserError("give a music-time budget (seconds) or a token budget (tokens)")
        if self.seconds is not None:
            fix("seconds", as_float(self.seconds, "seconds", 0, MAX_SECONDS, lo_open=True))
        if self.tokens is not None:
            fix("tokens", as_int(self.tokens, "tokens", 1, MAX_TOKENS))
        fix("variations", as_int(self.variations, "variations", 1, MAX_VARIATIONS))
        fix("temperature", as_float(self.temperature, "temperature", 0, MAX_TEMPERATURE))
        fix("top_k", as_int(self.top_k, "top-k", 0, MAX_TOP_K))
        fix("top_p", as_float(self.top_p, "top-p", 0, 1, lo_open=True))
        fix("min_p", as_float(self.min_p, "min-p", 0, 1))
        fix("guidance", as_float(self.guidance, "guidance", 0, MAX_GUIDANCE))
        fix("guidance_tokens", as_int(self.guidance_tokens, "guidance-tokens", 0,
                                      MAX_GUIDANCE_TOKENS))  # fmt: skip
        fix("seed", as_int(self.seed, "seed", 0, MAX_SEED - self.variations + 1))
        if self.latents is not None:
            fix("latents", as_int(self.latents, "latents", 1, MAX_LATENTS))
        fix("stop_at_eos", bool(self.stop_at_eos))
        if self.max_note_seconds is not None:  # 0: no limit, as None
            s = as_float(self.max_note_seconds, "max-note-seconds", 0, MAX_NOTE_SECONDS)
            fix("max_note_seconds", s or None)
        fix("pitch_range", controls.parse_pitch_range(self.pitch_range))
        fix("key", controls.parse_key(self.key))
        fix("velocity_range", controls.parse_velocity_range(self.velocity_range))
        fix("max_polyphony", controls.parse_max_polyphony(self.max_polyphony))
        humanize = str(self.humanize).strip().lower()
        if humanize not in HUMANIZE_CHOICES:
            raise UserError(
                f"humanize must be one of {', '.join(HUMANIZE_CHOICES)}, got {self.humanize!r}"
            )
        fix("humanize", humanize)
        self.allowed_pitches()  # a key with no pitch in the range is refused here

    def allowed_pitches(self) -> np.ndarray | None:
        """Pitches a generated NOTE_ON may start (None: all)."""
        return controls.allowed_pitches(self.pitch_range, self.key)

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)

    @property
    def max_new_tokens(self) -> int:
        if self.tokens is not None:
            return int(self.tokens)
        return max(64, math.ceil(self.seconds * MAX_TOKENS_PER_SECOND))

    def sample_options(self) -> SampleOptions:
        """The sampler's options for these settings (the one place they are mapped)."""
        return SampleOptions(
            max_new_tokens=self.max_new_tokens,
            temperature=float(self.temperature),
            top_k=int(self.top_k),
            top_p=float(self.top_p),
            min_p=float(self.min_p),
            guidance=float(self.guidance),
            guidance_tokens=int(self.guidance_tokens),
            max_seconds=self.seconds,
            num_latents=self.latents,
            stop_at_eos=bool(self.stop_at_eos),
            max_note_seconds=self.max_note_seconds,
            allowed_pitches=self.allowed_pitches(),
            velocity_range=self.velocity_range,
            max_polyphony=self.max_polyphony,
        )

    def sampler_key(self) -> tuple:
        """Settings that must be equal for prompts to share one sampler call: every field but
        the seed, the variations and the window (per prompt)."""
        return tuple(getattr(self, f) for f in _SAMPLER_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON (seed, variations and window apart; batch manifests list them
        separately); ranges as ``"LOW:HIGH"``."""
        ranges = ("pitch_range", "velocity_range")
        return {
            f: controls.format_range(getattr(self, f)) if f in ranges else getattr(self, f)
            for f in _SAMPLER_FIELDS
        }


# The sampling settings and musical controls: Settings fields that the CLI (an option each),
# a batch row (a column each), the page and the HTTP API carry under the same name, default and
# bound (tests/test_settings_agreement.py). A new control is a field here and in SampleOptions.
CONTROL_FIELDS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "guidance",
    "guidance_tokens",
    "latents",
    "max_note_seconds",
    "pitch_range",
    "key",
    "velocity_range",
    "max_polyphony",
    "humanize",
)
_PER_PROMPT = ("seed", "variations", "window")
_SAMPLER_FIELDS = tuple(f.name for f in dataclasses.fields(Settings) if f.name not in _PER_PROMPT)


# ----------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Continuation:
    """One sampled continuation.

    prime: the prime window ids as given (no SOS; the model may have heard them humanized,
    ``Settings.humanize``); ids: the new ids; seed: the
    sampler seed; variation: 1-based; seconds: music time of ``ids``; tokens: ``len(ids)``;
    sample_seconds: wall time of the sampler call that produced it (shared by its batch, includes
    compilation on first use); stop: why it ended (``"seconds"``, ``"tokens"``, ``"eos"`` or
    ``"stopped"`` by the callback); prime_cut: the window was longer than the model context and
    was cut to its last tokens.
    """

    prime: np.ndarray
    ids: np.ndarray
    seed: int
    variation: int
    seconds: float
    tokens: int
    sample_seconds: float
    stop: str
    prime_cut: bool = False
    head: np.ndarray | None = None  # the piece up to the window's end (None: the window)

    @property
    def prime_seconds(self) -> float:
        return music_seconds(self.prime)

    @property
    def full_ids(self) -> np.ndarray:
        """The piece so far: the prime up to the window's end, then the continuation (the same
        ``_full`` file on every surface; the web app's "Continue from this" continues it)."""
        head = self.prime if self.head is None else self.head
        return np.concatenate([head, self.ids]).astype(np.int32)

    def continuation_ids(self) -> np.ndarray:
        """The continuation alone, playable from time 0: the velocity in force at the end of the
        prime is re-stated if the continuation plays a note before choosing one."""
        return _with_velocity(self.prime, self.ids)

    def midi(self):
        """PrettyMIDI of the continuation alone (starts at time 0)."""
        return decode(self.continuation_ids())

    def full_midi(self):
        """PrettyMIDI of ``full_ids`` (the continuation starts at the window's end time)."""
        return decode(self.full_ids)


def _with_velocity(prime: np.ndarray, new: np.ndarray) -> np.ndarray:
    new = np.asarray(new, np.int32)
    is_on = (new >= C.NOTE_ON_FIRST_ID) & (new < C.NOTE_OFF_FIRST_ID)
    is_vel = new >= C.VELOCITY_FIRST_ID
    if not is_on.any() or is_vel[: int(np.argmax(is_on))].any():
        return new
    prime_vel = prime[np.asarray(prime) >= C.VELOCITY_FIRST_ID]
    if prime_vel.size == 0:
        return new
    return np.concatenate([[int(prime_vel[-1])], new]).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PrimeCut:
    """A prime read once: the window the model is given, and the piece up to the window's end
    (the start of every ``_full`` file)."""

    window: np.ndarray
    head: np.ndarray


NO_PRIME = PrimeCut(np.zeros((0,), np.int32), np.zeros((0,), np.int32))


def prime_ids(source, window: Window | None = None, *, name: str | None = None) -> np.ndarray:
    """Prime (path, bytes, PrettyMIDI, NoteSequence, an id array, or None) -> window ids."""
    return cut_prime(source, window, name=name).window


def cut_prime(source, window: Window | None = None, *, name: str | None = None) -> PrimeCut:
    """Prime (path, bytes, PrettyMIDI, NoteSequence, an id array, or None) -> its window ids
    and the piece up to the window's end, encoding it once.

    Raises :class:`UserError` (one line) for unreadable input, a prime with no notes, or a
    window without notes. ``None`` gives no prime (the sampler starts from SOS alone).
    """
    window = window or Window()
    if source is None:
        return NO_PRIME
    label = name or (str(source) if isinstance(source, str | os.PathLike) else "prime")
    if isinstance(source, np.ndarray | list | tuple):
        ids = np.asarray(source, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= C.VOCAB_SIZE):
            raise UserError(f"{label}: ids outside the vocabulary 0..{C.VOCAB_SIZE - 1}")
        ids = ids[(ids != C.PAD_ID) & (ids != C.SOS_ID) & (ids != C.EOS_ID)].astype(np.int32)
    else:
        try:
            ids = encode(source, name=name)
        except MidiError as exc:
            raise UserError(str(exc)) from None
    cut = window.cut(ids)
    if not _has_note_on(cut):
        raise UserError(
            f"{label}: the prime window ({window.describe()}) contains no notes "
            f"(the prime is {music_seconds(ids):.1f} s long)"
        )
    head = ids if window.kind != "range" or window.end is None else cut_range(ids, 0.0, window.end)
    return PrimeCut(np.asarray(cut, np.int32), np.asarray(head, np.int32))


def _has_note_on(ids: np.ndarray) -> bool:
    ids = np.asarray(ids)
    return bool(np.any((ids >= C.NOTE_ON_FIRST_ID) & (ids < C.NOTE_OFF_FIRST_ID)))


def context_tokens(model, latents: int | None = None) -> int:
    """Most prime tokens the sampler conditions on (its window ``N - R`` minus the SOS)."""
    return prompt_window(model.config, latents) - 1


def _fit_context(prime: np.ndarray, capacity: int) -> tuple[np.ndarray, bool]:
    if prime.size <= capacity:
        return prime, False
    return cut_last_tokens(prime, capacity), True


def _trim_to_seconds(ids: np.ndarray, seconds: float | None) -> tuple[np.ndarray, bool]:
    """Shortens the TIME_SHIFT that crossed the budget; returns (ids, budget reached)."""
    if seconds is None or ids.size == 0:
        return ids, False
    budget = max(1, int(round(seconds * C.STEPS_PER_SECOND)))
    steps = shift_steps(ids)
    total = int(steps.sum())
    if total < budget:
        return ids, False
    excess = total - budget
    last = int(ids[-1])
    if excess and C.TIME_SHIFT_FIRST_ID <= last <= C.TIME_SHIFT_LAST_ID:
        ids = ids.copy()
        ids[-1] = last - excess  # the shift was > excess: the total before it was < budget
    return ids, True


def check_latents(model, latents: int | None) -> None:
    m = model.config.num_latents
    if latents is not None and not 1 <= int(latents) <= m:
        raise UserError(f"latents must be in 1..{m} for this checkpoint, got {latents}")


def plays(humanize: str, music: np.ndarray) -> bool:
    """Whether the model hears ``music`` humanized (``Settings.humanize``): always ("on"), never
    ("off"), or when it looks like a sketch ("auto")."""
    return humanize == "on" or (humanize == "auto" and looks_quantized(music))


def heard(parts: Sequence[np.ndarray], seed: int, play: bool) -> list[np.ndarray]:
    """What the model hears of ``parts`` of one piece: with ``play`` (``plays``) each played with
    human timing and loudness, drawn from the variation's seed; else the parts themselves. A
    prime is one part; an infilling prompt's, the parts before and after the gap."""
    parts = [np.asarray(p, np.int32) for p in parts]
    if not play:
        return parts
    rng = np.random.default_rng([int(seed), HUMANIZE_STREAM])
    return [humanize_ids(p, rng) if p.size else p for p in parts]


def _heard(prime: np.ndarray, seed: int, humanize: str) -> np.ndarray:
    """A prime as the model hears it (``heard``); an infilling prompt as it is (its parts were
    humanized before its sentinels went in: ``app.core.infill``)."""
    if prime.size == 0 or int(prime.max()) >= C.VOCAB_SIZE:
        return prime
    return heard([prime], seed, plays(humanize, prime))[0]


def sample_continuations(
    model,
    primes: Sequence[np.ndarray],
    seeds: Sequence[int],
    settings: Settings,
    *,
    callback: Callable[[Any], Any] | None = None,
    variations: Sequence[int] | None = None,
    length_bucket: int = 0,
    heads: Sequence[np.ndarray] | None = None,
) -> list[Continuation]:
    """One sampler call: continues ``primes[i]`` (window ids) with seed ``seeds[i]``;
    ``heads[i]``: the piece up to that window's end (default: the window), for ``_full``.

    ``settings`` gives the budgets and sampling controls (its ``seed``, ``variations`` and
    ``window`` are not used here). ``callback`` receives the sampler's ``StepInfo`` after every
    compiled chunk and may stop early (return True or raise ``StopSampling``). ``variations``
    labels the results (default 1, 2, ...). ``length_bucket``: the sampler's (see
    :func:`model.sampler.sample`); the notes do not depend on it.
    """
    if len(primes) != len(seeds):
        raise ValueError(f"{len(primes)} primes but {len(seeds)} seeds")
    if not primes:
        return []
    check_latents(model, settings.latents)
    capacity = context_tokens(model, settings.latents)
    fitted = [_fit_context(np.asarray(p, np.int32), capacity) for p in primes]
    stopped_early = False

    def on_chunk(info):
        nonlocal stopped_early
        try:
            stopped_early = bool(callback(info))
        except StopSampling:
            stopped_early = True
        return stopped_early

    heard = [_heard(p, seed, settings.humanize) for (p, _), seed in zip(fitted, seeds, strict=True)]
    t0 = time.perf_counter()
    try:
        outs = sample(
            model,
            heard,
            settings.sample_options(),
            seed=[int(s) for s in seeds],
            callback=on_chunk if callback is not None else None,
            length_bucket=length_bucket,
        )
    except ValueError as exc:  # settings the model cannot honour
        raise UserError(str(exc)) from None
    elapsed = time.perf_counter() - t0

    results = []
    labels = list(variations) if variations is not None else list(range(1, len(primes) + 1))
    heads = list(heads) if heads is not None else [None] * len(primes)
    for (prime, cut), seed, ids, v, head in zip(fitted, seeds, outs, labels, heads, strict=True):
        ids, reached = _trim_to_seconds(np.asarray(ids, np.int32), settings.seconds)
        if reached:
            stop = "seconds"
        elif ids.size >= settings.max_new_tokens:
            stop = "tokens"
        elif stopped_early:
            stop = "stopped"
        else:
            stop = "eos"
        results.append(
            Continuation(
                prime=prime,
                ids=ids,
                seed=int(seed),
                variation=int(v),
                seconds=music_seconds(ids),
                tokens=int(ids.size),
                sample_seconds=elapsed,
                stop=stop,
                prime_cut=cut,
                head=None if head is None else np.asarray(head, np.int32),
            )
        )
    return results


def variation_seeds(seed: int, variations: int) -> list[int]:
    """Seeds of variations 1..N: seed, seed + 1, ... (the sampler's rule for a batch)."""
    return [int(seed) + v for v in range(int(variations))]


def continue_prime(
    model,
    prime_source,
    settings: Settings,
    *,
    callback: Callable[[Any], Any] | None = None,
    name: str | None = None,
    length_bucket: int = 0,
) -> list[Continuation]:
    """Continues one prime ``settings.variations`` times (one batch); see the module doc.

    ``prime_source``: a :class:`PrimeCut` (already read and cut: ``settings.window`` is not
    applied again), a MIDI path, bytes, PrettyMIDI, NoteSequence, an id array, or None (start
    from SOS). Raises :class:`UserError` with a one-line message for user mistakes.
    """
    if isinstance(prime_source, PrimeCut):
        prime = prime_source
    else:
        prime = cut_prime(prime_source, settings.window, name=name)
    n = int(settings.variations)
    seeds = variation_seeds(settings.seed, n)
    return sample_continuations(
        model,
        [prime.window] * n,
        seeds,
        settings,
        callback=callback,
        length_bucket=length_bucket,
        heads=[prime.head] * n,
    )


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------

AUDIO_CHOICES = ("wav", "flac", "none")
MIDI_SUFFIXES = (".mid", ".midi")


def output_stem(name: str) -> str:
    """An output stem from a user-given name or a prime's identity, safe to join to an output
    folder: no extension, safe characters, no absolute or '..' parts (so it never escapes the
    folder; '/'-separated subfolders stay). ``batch`` and ``generate --name`` both use it."""
    parts = [p for p in re.split(r"[\\/]+", str(name)) if p not in ("", ".")]
    parts = ["_" if p == ".." else re.sub(r"[^A-Za-z0-9._ +=,@-]", "_", p) for p in parts]
    if not parts:
        parts = ["prime"]
    last = parts[-1]
    for suffix in MIDI_SUFFIXES:
        if last.lower().endswith(suffix) and len(last) > len(suffix):
            last = last[: -len(suffix)]
    parts[-1] = last.lstrip(".") or "prime"
    return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class OutputOptions:
    """What to write for each continuation.

    full: the MIDI holds the piece so far (``Continuation.full_ids``: the prime up to the
    window's end, then the continuation), else the continuation alone;
    audio: ``"wav"``, ``"flac"`` or ``"none"``; soundfont: a .sf2 path or bytes (None: the bundled
    TimGM6mb.sf2); synth: ``"midirenderer"`` or ``"fluidsynth"``.
    """

    full: bool = False
    audio: str = "wav"
    sample_rate: int = 44100
    soundfont: str | os.PathLike | bytes | None = None
    synth: str = "midirenderer"

    def __post_init__(self):
        if self.audio not in AUDIO_CHOICES:
            raise UserError(f"audio must be one of {', '.join(AUDIO_CHOICES)}, got {self.audio!r}")

    def file_names(self, stem: str, variation: int) -> dict[str, str]:
        names = {"midi": f"{stem}_v{variation}.mid"}
        if self.audio != "none":
            names["audio"] = f"{stem}_v{variation}.{self.audio}"
        return names


def output_bytes(c: Continuation, options: OutputOptions) -> dict[str, bytes]:
    """The files of one continuation as bytes: ``{"midi": ..., "audio": ...}`` (audio is the
    rendering of exactly that MIDI file)."""
    pm = c.full_midi() if options.full else c.midi()
    data = {"midi": midi_bytes(pm)}
    if options.audio != "none":
        data["audio"], _ = audio_bytes(data["midi"], options)
    return data


def audio_bytes(midi: bytes, options: OutputOptions) -> tuple[bytes, float]:
    """The one audio path (CLI, batch, web app): MIDI bytes rendered with the options' SoundFont
    and synthesizer, encoded as ``options.audio``; returns (file bytes, seconds of audio)."""
    audio = render.render(
        midi, sample_rate=options.sample_rate, soundfont=options.soundfont, synth=options.synth
    )
    data = render.audio_bytes(audio, options.sample_rate, options.audio)
    return data, audio.shape[0] / options.sample_rate


def write_files(out_dir: str | os.PathLike, names: dict[str, str], data: dict[str, bytes]):
    """Writes ``data[kind]`` to ``out_dir / names[kind]`` atomically; returns {kind: Path}."""
    out_dir = pathlib.Path(out_dir)
    paths = {}
    for kind, rel in names.items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data[kind])
        paths[kind] = path
    return paths


def write_outputs(
    c: Continuation,
    out_dir: str | os.PathLike,
    stem: str,
    options: OutputOptions | None = None,
) -> dict[str, pathlib.Path]:
    """Writes ``out_dir/<stem>_v<variation>.mid`` (+ ``.wav``/``.flac``) atomically; returns
    ``{"midi": path, "audio": path}``."""
    options = options or OutputOptions()
    return write_files(out_dir, options.file_names(stem, c.variation), output_bytes(c, options))


def ensure_out_dir(path: str | os.PathLike) -> pathlib.Path:
    """Creates the output folder; UserError (one line) if it cannot be created or written."""
    import tempfile

    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{path}: cannot create the output folder ({reason})") from None
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"{path}: output folder is not writable ({reason})") from None
    return path
