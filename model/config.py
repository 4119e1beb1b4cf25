"""Perceiver AR configuration: one frozen dataclass and named presets."""

from __future__ import annotations

import dataclasses

from perceiver_midi.model.infill import Layout
from perceiver_midi.model.vocab import NUM_SENTINELS, VOCAB_SIZE

NOISE_EVENTS = (
    "all",
    "timing",
    "compress",
    "compress_far",
)  # input_noise_events (model.perceiver_ar.noise_inputs)


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyper-parameters of a Perceiver AR (and, with ``num_latents == max_len``, a plain decoder).

    Attributes:
      vocab_size: number of token ids (PAD=0, EOS=1, SOS=2 included).
      max_len: N, the input context length seen by the cross-attention.
      num_latents: M, the number of latents (the last M input positions), M <= N.
      d_model: width of the latent stack.
      num_heads: heads of the latent self-attention layers.
      num_layers: L, number of causal self-attention layers over the latents.
      mlp_ratio: hidden width of every MLP as a multiple of ``d_model``.
      input_dim: width of the input embedding and of the cross-attention keys/values (the official
        code's ``input_embed_dim``); ``None`` means ``d_model``. When it differs from ``d_model`` a
        linear map turns the latents' input embeddings into their initial ``d_model`` state.
      cross_heads: heads of the cross-attention (``None`` means ``num_heads``).
      dropout: dropout on attention and MLP outputs at training time.
      cross_attend_dropout: fraction of the non-latent input positions dropped from the
        cross-attention keys at training time (the paper's regulariser).
      input_noise: fraction of the input tokens replaced at training time by a token from earlier
        in the same sequence (causal unigram noising, after Xie et al. 2017: the model learns to
        continue the real music from a context that is not quite it, as its own continuations
        are); the targets stay the real tokens. 0 = off.
      input_noise_events: which tokens ``input_noise`` replaces: ``"all"``, or ``"timing"``
        (TIME_SHIFTs and VELOCITYs only, each by an earlier token of its kind: notes and their
        NOTE_ON/NOTE_OFF pairing are left as played), or ``"compress"`` (TIME_SHIFTs only,
        each shortened to 50-100% of its steps: the context looks busier than the music the
        targets continue), or ``"compress_far"`` (the same, only for the inputs before the
        latents: the notes sounding near the latents keep their true lengths).
      rotary_fraction: fraction of each head's channels that carry rotary position encoding.
      max_wavelength: longest rotary wavelength (must be >= ``max_len``).
      z_loss: weight of the log(Z)^2 auxiliary loss.
      activation: MLP non-linearity: ``"sq_relu"`` (official default), ``"gelu"`` or ``"relu"``.
      attn_query_chunk: if > 0, attention is computed over chunks of this many queries with
        rematerialisation, which bounds the memory of the score matrix (for very long M).
      cross_smear: S > 0 gives the cross-attention an induction path: every key also sees the
        S tokens before its own (a zero-initialised linear map of their key/value-normalised
        embeddings, one matrix per offset, added before the rotary encoding), and so does every
        latent's query. A query "what I just heard" then finds the places the same few tokens
        were heard before, and reads the value of the token that followed them there. A
        single-token key cannot do that lookup in one cross-attend.
      latent_smear: S' <= ``cross_smear``: the same for the keys and queries of every latent
        self-attention layer (the S' tokens before each latent, zero-initialised, one map per
        layer), so a single layer can do the induction lookup over the latent window.
      match_lookup: L > 0 adds to every latent's initial state (zero-initialised embeddings) the
        token that followed the latest earlier place where the music went the same way (up to
        L tokens compared, coarsely) and how long that agreement is (``model/match.py``).
      note_lookup: K > 0: the same over the NOTE_ON pitches alone (up to K notes compared), so
        a figure replayed with human timing is still found; the pitch that followed gets a
        logit bonus by match length that moves probability among the NOTE_ONs only (their
        total, and so the timing, stays the model's), plus zero-initialised embeddings.
      match_min_notes: N > 0: both lookups drop a match whose earlier occurrence is fewer than N
        notes back (a note or a trill repeating itself), which in free-running sampling feeds
        on the model's own repeats (``model/match.py``). No parameters: a checkpoint can be
        read with or without it.
      infill: the input embedding also holds the infilling sentinels (``vocab.FIM_*``,
        ``model/infill.py``), so a prompt can show what comes after a gap before what comes
        before it; the logits stay ``vocab_size`` wide (a sentinel is never predicted).
      gap_clock: with ``infill``, every latent's initial state also gets a (zero-initialised)
        embedding of how much of the gap's music time is left at its position
        (``model/gap_clock.py``), so the middle knows when it must meet the part after the gap.
      gap_join: with ``infill``, the latents of a middle also get a (zero-initialised) linear
        map of the pitches the part after the gap starts in its first second.
      gap_held: with ``infill``, the latents of a middle also get a (zero-initialised) linear map
        of the *pending* pitches (struck in the gap and sounding across its end, as the part after
        the gap's leading NOTE_OFFs show, and not sounding yet), and their NOTE_ONs a logit bonus
        by the time left in the gap (``gap_clock.pending``), the NOTE_ONs' total kept.
      infill_join: with ``infill``, J > 0 repeats the first J tokens of the part after the gap
        just before MIDDLE (``infill.Layout``), inside the latents' window; a layout: the
        training crops and every surface's prompts follow the model's (``infill_layout``).
      infill_tail: with ``infill_join``, K > 0 moves the last K tokens of the part before the
        gap after that repeat, so the middle continues the music it follows (``infill.Layout``).
      gap_segments: with ``infill``, every input token (the cross-attention's keys and values,
        and the latents' initial states) also gets a (zero-initialised) embedding of the part of
        an infilling prompt it is in: the gap's length, the part after the gap, the middle, or
        anything else (``gap_clock.segments``), so a middle's latents can find the music after
        the gap by what it is rather than by where it sits.
      note_state: add to every latent's initial state a (zero-initialised) linear map of the
        performance state at its position: which pitches sound and for how long
        (``model/note_state.py``).
      dtype: compute dtype (``"float32"``; ``"bfloat16"`` is sensible on GPU/TPU). Parameters,
        softmax, losses and sampling are always float32.
    """

    vocab_size: int = VOCAB_SIZE
    max_len: int = 4096
    num_latents: int = 512
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 4
    mlp_ratio: int = 4
    input_dim: int | None = None
    cross_heads: int | None = None
    dropout: float = 0.1
    cross_attend_dropout: float = 0.15
    input_noise: float = 0.0
    input_noise_events: str = "all"
    rotary_fraction: float = 0.5
    max_wavelength: float = 10_000.0
    z_loss: float = 1e-4
    activation: str = "sq_relu"
    attn_query_chunk: int = 0
    note_state: bool = False
    cross_smear: int = 0
    latent_smear: int = 0
    match_lookup: int = 0
    note_lookup: int = 0
    match_min_notes: int = 0
    infill: bool = False
    gap_clock: bool = False
    gap_join: bool = False
    gap_segments: bool = False
    gap_held: bool = False
    infill_join: int = 0
    infill_tail: int = 0
    dtype: str = "float32"

    def __post_init__(self):
        if not 1 <= self.num_latents <= self.max_len:
            raise ValueError(f"num_latents must be in [1, max_len], got {self.num_latents}")
        if self.d_model % self.num_heads:
            raise ValueError("d_model must be divisible by num_heads")
        if self.embed_dim % self.num_cross_heads:
            raise ValueError("input_dim must be divisible by cross_heads")
        if not 0.0 <= self.rotary_fraction <= 1.0:
            raise ValueError("rotary_fraction must be in [0, 1]")
        if self.max_wavelength < self.max_len:
            raise ValueError("max_wavelength must be >= max_len")
        if not 0 <= self.cross_smear <= 16:
            raise ValueError(f"cross_smear must be in [0, 16], got {self.cross_smear}")
        if not 0 <= self.latent_smear <= self.cross_smear:
            raise ValueError(
                f"latent_smear must be in [0, cross_smear={self.cross_smear}], "
                f"got {self.latent_smear}"
            )
        if not 0 <= self.match_lookup <= 32:
            raise ValueError(f"match_lookup must be in [0, 32], got {self.match_lookup}")
        if not 0 <= self.note_lookup <= 32:
            raise ValueError(f"note_lookup must be in [0, 32], got {self.note_lookup}")
        if not 0 <= self.match_min_notes <= 16:
            raise ValueError(f"match_min_notes must be in [0, 16], got {self.match_min_notes}")
        if (self.gap_clock or self.gap_join or self.gap_segments) and not self.infill:
            raise ValueError("gap_clock, gap_join and gap_segments need infill")
        if self.gap_held and not self.infill:
            raise ValueError("gap_held needs infill")
        if self.infill_join and not self.infill:
            raise ValueError("infill_join needs infill")
        self.infill_layout.check()
        if self.activation not in ("sq_relu", "gelu", "relu"):
            raise ValueError(f"unknown activation {self.activation!r}")
        if not 0.0 <= self.cross_attend_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout rates must be in [0, 1)")
        if not 0.0 <= self.input_noise < 1.0:
            raise ValueError(f"input_noise must be in [0, 1), got {self.input_noise}")
        if self.input_noise_events not in NOISE_EVENTS:
            raise ValueError(
                f"input_noise_events must be one of {NOISE_EVENTS}, got {self.input_noise_events!r}"
            )

    @property
    def input_vocab_size(self) -> int:
        """Rows of the input embedding: the vocabulary, plus the sentinels with ``infill``."""
        return self.vocab_size + (NUM_SENTINELS if self.infill else 0)

    @property
    def infill_layout(self) -> Layout:
        """Where this model's infilling prompts repeat the start of the part after the gap."""
        return Layout(self.infill_join, self.infill_tail)

    @property
    def embed_dim(self) -> int:
        return self.d_model if self.input_dim is None else self.input_dim

    @property
    def num_cross_heads(self) -> int:
        return self.num_heads if self.cross_heads is None else self.cross_heads

    @property
    def is_transformer(self) -> bool:
        """True when M == N: the same code is then a plain decoder-only Transformer."""
        return self.num_latents == self.max_len

    def replace(self, **overrides) -> Config:
        return dataclasses.replace(self, **overrides)


PRESETS: dict[str, Config] = {
    # Unit tests: trains in seconds.
    "tiny": Config(
        max_len=64,
        num_latents=16,
        d_model=64,
        num_heads=2,
        num_layers=2,
        mlp_ratio=2,
        dropout=0.0,
        cross_attend_dropout=0.0,
        max_wavelength=10_000.0,
    ),
    # What we can train and sample on 2 CPU cores (speed: benchmarks/results/model.json): a
    # 4096-token context, 256 latents, 4.0 M parameters, narrow (128-wide) cross-attention
    # keys/values so a sequence's decoding caches stay at 6 MiB (4 MiB inputs + 2 MiB latents).
    "cpu": Config(
        max_len=4096,
        num_latents=256,
        d_model=256,
        num_heads=4,
        num_layers=4,
        mlp_ratio=4,
        input_dim=128,
        cross_heads=2,
        dropout=0.1,
        cross_attend_dropout=0.15,
    ),
    # GPU/TPU scale, in the spirit of the paper's MAESTRO models.
    "paper": Config(
        max_len=4096,
        num_latents=1024,
        d_model=1024,
        num_heads=16,
        num_layers=12,
        mlp_ratio=4,
        dropout=0.1,
        cross_attend_dropout=0.15,
        dtype="bfloat16",
    ),
}


def get_config(name: str = "tiny", **overrides) -> Config:
    """Preset ``name`` with ``overrides`` applied, e.g. ``get_config("cpu", max_len=8192)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)
