"""CLI subcommands: ``continue``, ``generate``, ``infill`` and ``render`` (``batch``: its package).

Registered by ``app.cli.build_parser`` through :func:`add_commands`. All of them go through
:mod:`app.core.pipeline`; user mistakes raise :class:`app.core.errors.UserError` (one line, exit 2),
and argument errors of these subcommands are one line too (no usage dump).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

from perceiver_midi.app.core import render
from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.infill import Gap, infill_piece, plan_gap, write_infill
from perceiver_midi.app.core.pipeline import (
    CONTROL_FIELDS,
    DEFAULT_GUIDANCE,
    DEFAULT_GUIDANCE_TOKENS,
    DEFAULT_HUMANIZE,
    DEFAULT_MAX_NOTE_SECONDS,
    DEFAULT_MAX_POLYPHONY,
    DEFAULT_MIN_P,
    DEFAULT_PRIME_SECONDS,
    DEFAULT_SECONDS,
    DEFAULT_TOP_P,
    HUMANIZE_CHOICES,
    MAX_GUIDANCE,
    MAX_NOTE_SECONDS,
    MAX_SECONDS,
    MAX_TOKENS,
    MAX_VARIATIONS,
    OutputOptions,
    Settings,
    Window,
    continue_prime,
    cut_prime,
    ensure_out_dir,
    output_stem,
    write_outputs,
)
from perceiver_midi.model.checkpoint import (
    DEFAULT_NAME,
    INFILL_NAME,
    CheckpointError,
    default_checkpoint,
    load_model,
)
from perceiver_midi.tokenizer import MidiError, read_midi

# ----------------------------------------------------------------------------------------------
# Options
# ----------------------------------------------------------------------------------------------


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    def error(message: str):
        parser.exit(2, f"error: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_sampling(p: argparse.ArgumentParser, *, batch: bool = False, infill: bool = False):
    """The sampling options and musical controls (``infill``: without the budgets and EOS, which
    the gap decides)."""
    g = p.add_argument_group("sampling")
    if not infill:
        g.add_argument(
            "--seconds",
            type=float,
            metavar="S",
            help=f"music time to add per continuation (default {DEFAULT_SECONDS:g}, at most "
            f"{MAX_SECONDS:g})",
        )
        g.add_argument(
            "--tokens",
            type=_positive_int,
            metavar="N",
            help=f"token budget instead of --seconds (at most {MAX_TOKENS:,})",
        )
    what = "new middles" if infill else "continuations per prime"
    g.add_argument(
        "--variations",
        type=_positive_int,
        metavar="N",
        default=1,
        help=f"{what}, sampled as one batch (default 1, at most {MAX_VARIATIONS})",
    )
    g.add_argument(
        "--temperature", type=float, default=1.0, metavar="T", help="0 = greedy (default 1.0)"
    )
    g.add_argument(
        "--top-k", type=int, default=0, metavar="K", help="keep the k likeliest tokens (0 = off)"
    )
    g.add_argument(
        "--top-p",
        type=float,
        default=DEFAULT_TOP_P,
        metavar="P",
        help=f"nucleus sampling (default {DEFAULT_TOP_P:g}; 1 = off)",
    )
    g.add_argument(
        "--min-p",
        type=float,
        default=DEFAULT_MIN_P,
        metavar="P",
        help="keep tokens at least P times as likely as the likeliest (default 0 = off)",
    )
    g.add_argument(
        "--guidance",
        type=float,
        default=DEFAULT_GUIDANCE,
        metavar="G",
        help="context guidance: weigh what the prime changes in the model's prediction G times "
        f"more (default {DEFAULT_GUIDANCE:g}; 0 = off, at most {MAX_GUIDANCE:g}; doubles the work)",
    )
    g.add_argument(
        "--guidance-tokens",
        type=int,
        default=DEFAULT_GUIDANCE_TOKENS,
        metavar="K",
        help="the guidance's comparison sees only the prime's last K tokens (default "
        f"{DEFAULT_GUIDANCE_TOKENS})",
    )
    g.add_argument(
        "--humanize",
        choices=HUMANIZE_CHOICES,
        help="music that looks quantized (onsets on a grid, at most two loudness levels) reaches "
        "the model played with human timing and loudness; the files keep it as given (default "
        f"{DEFAULT_HUMANIZE}; on: always; off: never)",
    )
    seed_help = (
        "base seed; each item's seed is derived from it and the prime's identity"
        if batch
        else "seed of variation 1 (variation v uses seed + v - 1); default 0"
    )
    g.add_argument("--seed", type=int, default=0, metavar="N", help=seed_help)
    g.add_argument(
        "--latents",
        type=_positive_int,
        metavar="M",
        help="latents used while sampling (test-time compute; default: the model's)",
    )
    if not infill:
        g.add_argument(
            "--ignore-eos", action="store_true", help="never stop early at EOS: fill the budget"
        )
    g.add_argument(
        "--max-note-seconds",
        type=float,
        metavar="S",
        help="longest note: a note sounding S seconds is ended before time moves on "
        f"(default {DEFAULT_MAX_NOTE_SECONDS:g}; 0 = no limit; at most {MAX_NOTE_SECONDS:g})",
    )
    default = INFILL_NAME if infill else DEFAULT_NAME
    g.add_argument(
        "--checkpoint", metavar="DIR", help=f"model checkpoint (default: the shipped {default})"
    )
    c = p.add_argument_group("musical controls (held on every generated note; default: off)")
    c.add_argument(
        "--pitch-range",
        metavar="LOW:HIGH",
        help="no note outside it: MIDI numbers or names, e.g. 48:72 or C3:C5 (C4 = 60)",
    )
    c.add_argument(
        "--key",
        metavar="KEY",
        help="only notes of the scale: C, Am, F#m, Bb major (natural minor), or pitch classes "
        "like C,D,E,G,A",
    )
    c.add_argument(
        "--velocity-range",
        metavar="LOW:HIGH",
        help="dynamics: every note's MIDI velocity inside it (1-127), e.g. 40:90",
    )
    c.add_argument(
        "--max-polyphony",
        metavar="N",
        help=f"no new note while N notes sound (default {DEFAULT_MAX_POLYPHONY}; 0 = no limit; "
        "at most 128)",
    )


def _add_window(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prime window (default: the last 20 s)")
    g.add_argument(
        "--prime-seconds", type=float, metavar="S", help="use the last S seconds of the prime"
    )
    g.add_argument(
        "--prime-tokens",
        type=_positive_int,
        metavar="N",
        help="use at most the last N tokens (of the piece, or of --prime-seconds/--prime-range)",
    )
    g.add_argument(
        "--prime-range",
        metavar="START:END",
        help="use music time START..END seconds (END may be empty: to the end; '0:' = all)",
    )


def _add_output(
    p: argparse.ArgumentParser, *, out_default: str | None, full: bool = True, audio: str = "wav"
):
    g = p.add_argument_group("output")
    if out_default is None:
        g.add_argument("--out", required=True, metavar="DIR", help="output folder")
    else:
        g.add_argument(
            "--out", default=out_default, metavar="DIR", help="output folder (default: .)"
        )
    g.add_argument(
        "--audio",
        choices=["wav", "flac", "none"],
        default=audio,
        help=f"audio next to each MIDI file (default {audio})",
    )
    _add_synth(g)
    if full:
        g.add_argument(
            "--full",
            action="store_true",
            help="write the piece so far (the prime up to the window's end, then the "
            "continuation) in one file",
        )


def _add_synth(g) -> None:
    g.add_argument("--soundfont", metavar="SF2", help="SoundFont (default: bundled TimGM6mb.sf2)")
    g.add_argument("--sample-rate", type=int, metavar="HZ", help="audio sample rate (44100)")
    g.add_argument(
        "--synth",
        choices=["midirenderer", "fluidsynth"],
        help="synthesizer (default midirenderer; fluidsynth needs pyfluidsynth + libfluidsynth)",
    )


def settings_from_args(args: argparse.Namespace, *, window: bool = True):
    """Settings from parsed options; contradictory options are a UserError."""
    seconds, tokens = getattr(args, "seconds", None), getattr(args, "tokens", None)
    if seconds is not None and tokens is not None:
        raise UserError("use --seconds or --tokens, not both")
    if seconds is None and tokens is None:
        seconds = DEFAULT_SECONDS  # (infill: replaced by the gap's length)
    win = Window.last_seconds(DEFAULT_PRIME_SECONDS)
    if window:
        if args.prime_seconds is not None and args.prime_range is not None:
            raise UserError("--prime-seconds and --prime-range contradict each other: give one")
        win = Window.from_options(args.prime_seconds, args.prime_tokens, args.prime_range)
    controls = {f: getattr(args, f) for f in CONTROL_FIELDS}  # None: the Settings default
    return Settings(
        seconds=seconds,
        tokens=tokens,
        variations=args.variations,
        seed=args.seed,
        window=win,
        stop_at_eos=not getattr(args, "ignore_eos", False),
        **{f: v for f, v in controls.items() if v is not None},
    )


def output_options_from_args(args: argparse.Namespace):
    if args.audio == "none":
        for name in ("soundfont", "sample_rate", "synth"):
            if getattr(args, name) is not None:
                flag = "--" + name.replace("_", "-")
                raise UserError(f"{flag} needs audio output, but --audio is none")
    if args.soundfont is not None and not pathlib.Path(args.soundfont).is_file():
        raise UserError(f"{args.soundfont}: no such SoundFont file")
    return OutputOptions(
        full=getattr(args, "full", False),
        audio=args.audio,
        sample_rate=args.sample_rate or 44100,
        soundfont=args.soundfont,
        synth=args.synth or "midirenderer",
    )


def load_model_or_exit(checkpoint: str | None, task: str = "continue"):
    if checkpoint is None and task != "continue":
        checkpoint = default_checkpoint(task)
        if checkpoint is None:
            raise UserError(f"no shipped {task} checkpoint; pass --checkpoint DIR")
    try:
        return load_model(checkpoint)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


# ----------------------------------------------------------------------------------------------
# continue / generate
# ----------------------------------------------------------------------------------------------


class _SamplingProgress:
    """A tqdm bar fed by the sampler's callback: music seconds (or tokens) of the budget."""

    def __init__(self, settings, n: int):
        from tqdm import tqdm

        self.settings = settings
        self.t0 = time.perf_counter()
        self.first: tuple[float, int] | None = None  # (time, tokens) at the first/last callback
        self.last: tuple[float, int] = (self.t0, 0)
        by_time = settings.seconds is not None
        self.total = float(settings.seconds if by_time else settings.tokens)
        self.bar = tqdm(
            total=round(self.total, 2),
            unit="s" if by_time else "tok",
            desc=f"sampling {n}" if n > 1 else "sampling",
            file=sys.stderr,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:g} {unit} "
            "[{elapsed}<{remaining}{postfix}]",
            disable=None,
        )

    def __call__(self, info) -> None:
        import numpy as np

        if self.settings.seconds is not None:
            frac = np.minimum(1.0, info.seconds / self.settings.seconds)
        else:
            frac = np.minimum(1.0, info.num_tokens / self.total)
        frac = np.where(info.done, 1.0, frac)
        self.bar.n = round(float(frac.mean()) * self.total, 2)
        now, tokens = time.perf_counter(), int(info.num_tokens.sum())
        if self.first is None:  # the first chunk includes compiling the sampler
            self.first = (now, tokens)
        self.last = (now, tokens)
        rate = tokens / max(1e-9, now - self.t0)
        self.bar.set_postfix_str(f"{rate:.0f} tok/s", refresh=False)
        self.bar.refresh()

    def steady_rate(self) -> float | None:
        """Tokens/s after the first chunk (so without compilation), if there was more than one."""
        if self.first is None or self.last[0] <= self.first[0]:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])

    def close(self) -> None:
        self.bar.close()


def _print_table(rows: list[tuple[str, str, str, str]]) -> None:
    header = ("files", "music s", "tokens", "tokens/s")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for k, r in enumerate([header, *rows]):
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        print("  ".join(cells).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))


def _generate(args: argparse.Namespace, prime_source, stem: str, label: str) -> int:
    settings = settings_from_args(args, window=prime_source is not None)
    options = output_options_from_args(args)
    if prime_source is not None:  # read once, and fail fast, before loading the model
        prime_source = cut_prime(prime_source, settings.window)
    out_dir = ensure_out_dir(args.out)
    model = load_model_or_exit(args.checkpoint)
    progress = _SamplingProgress(settings, settings.variations)
    try:
        conts = continue_prime(model, prime_source, settings, callback=progress)
    finally:
        progress.close()

    # tokens/s: the batch's rate after the first chunk (which includes compiling the sampler),
    # shared out by tokens; the wall-time rate when sampling took a single chunk.
    c0 = conts[0]
    total_tokens = sum(c.tokens for c in conts)
    steady = progress.steady_rate()
    batch_rate = steady if steady is not None else total_tokens / max(1e-9, c0.sample_seconds)
    rows = []
    for c in conts:
        paths = write_outputs(c, out_dir, stem, options)
        files = ", ".join(str(p) for p in paths.values())
        rate = batch_rate * c.tokens / max(1, total_tokens)
        rows.append((files, f"{c.seconds:.2f}", str(c.tokens), f"{rate:.0f}"))
        if c.stop == "eos":
            print(
                f"note: variation {c.variation} ended at EOS after {c.seconds:.2f} s",
                file=sys.stderr,
            )
    if c0.prime_cut:
        print(
            f"note: the prime window was longer than the model's context; it was cut to its "
            f"last {c0.prime.size} tokens",
            file=sys.stderr,
        )
    if len(conts) > 1:
        total_s = sum(c.seconds for c in conts)
        rows.append(("total", f"{total_s:.2f}", str(total_tokens), f"{batch_rate:.0f}"))
    if prime_source is not None:
        what = (
            f"prime window {settings.window.describe()} "
            f"({c0.prime_seconds:.2f} s, {c0.prime.size} tokens)"
        )
    else:
        what = "from SOS"
    rate_note = "after compilation" if steady is not None else "incl. compilation"
    print(
        f"{label}: {what}; seeds {c0.seed}..{conts[-1].seed}; sampled in "
        f"{c0.sample_seconds:.1f} s ({batch_rate:.0f} tokens/s {rate_note})"
    )
    _print_table(rows)
    return 0


def cmd_continue(args: argparse.Namespace) -> int:
    prime = pathlib.Path(args.prime)
    if not prime.exists():
        raise UserError(f"{prime}: no such file")
    if prime.is_dir():
        raise UserError(f"{prime}: is a directory, not a MIDI file")
    return _generate(args, str(prime), prime.stem, str(prime))


def cmd_generate(args: argparse.Namespace) -> int:
    stem = output_stem(args.name)  # the same rule as batch: never outside --out
    if stem != args.name:
        print(f"note: --name {args.name!r} written as {stem!r} inside --out", file=sys.stderr)
    return _generate(args, None, stem, "generate")


# ----------------------------------------------------------------------------------------------
# infill
# ----------------------------------------------------------------------------------------------


def cmd_infill(args: argparse.Namespace) -> int:
    piece_path = pathlib.Path(args.piece)
    if not piece_path.exists():
        raise UserError(f"{piece_path}: no such file")
    if piece_path.is_dir():
        raise UserError(f"{piece_path}: is a directory, not a MIDI file")
    gap = Gap.parse(args.range)
    settings = settings_from_args(args, window=False)
    options = output_options_from_args(args)
    piece = cut_prime(str(piece_path), Window.whole()).window  # fail fast, before the model
    out_dir = ensure_out_dir(args.out)
    model = load_model_or_exit(args.checkpoint, "infill")
    plan_gap(model, piece, gap, settings, str(piece_path))  # a bad range: one line, no work
    filled = infill_piece(model, piece, gap, settings, name=str(piece_path))
    f0 = filled[0]
    print(
        f"infill {piece_path}: {f0.start:.2f}..{f0.end:.2f} s regenerated "
        f"(asked {gap.describe()}); seeds {f0.seed}..{filled[-1].seed}; sampled in "
        f"{f0.sample_seconds:.1f} s"
    )
    for f in filled:
        paths = write_infill(f, out_dir, piece_path.stem, options)
        print("  " + ", ".join(str(p) for p in paths.values()))
        if f.stop == "tokens":
            print(
                f"note: variation {f.variation} used its whole token budget before the gap's "
                "end; the rest of the gap is silent",
                file=sys.stderr,
            )
    return 0


# ----------------------------------------------------------------------------------------------
# render
# ----------------------------------------------------------------------------------------------


def cmd_render(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.output)
    render.audio_format(out)
    try:
        table = read_midi(args.input)
    except MidiError as exc:
        raise UserError(str(exc)) from None
    if len(table) == 0:
        raise UserError(f"{args.input}: contains no notes")
    if args.soundfont is not None and not pathlib.Path(args.soundfont).is_file():
        raise UserError(f"{args.soundfont}: no such SoundFont file")
    ensure_out_dir(out.parent)
    rate = args.sample_rate or render.DEFAULT_SAMPLE_RATE
    try:
        path, seconds = render.render_file(
            args.input,
            out,
            sample_rate=rate,
            soundfont=args.soundfont,
            synth=args.synth or "midirenderer",
        )
    except OSError as exc:
        raise UserError(f"{out}: cannot write ({exc.strerror})") from None
    print(f"wrote {path} ({seconds:.2f} s, {rate} Hz, stereo)")
    return 0


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------


def add_commands(sub) -> None:
    """Adds ``continue``, ``generate``, ``infill`` and ``render`` to ``perceiver-midi``."""
    p = sub.add_parser(
        "continue",
        help="continue a MIDI file: MIDI (+ audio) files",
        description="Continue PRIME.mid; writes DIR/<prime-stem>_v1.mid (+ audio), ...",
    )
    p.add_argument("prime", metavar="PRIME.mid")
    _add_sampling(p)
    _add_window(p)
    _add_output(p, out_default=".")
    p.set_defaults(func=cmd_continue)
    _one_line_errors(p)

    p = sub.add_parser(
        "generate",
        help="generate music with no prime (from SOS)",
        description="Generate from scratch; writes DIR/<name>_v1.mid (+ audio), ...",
    )
    _add_sampling(p)
    _add_output(p, out_default=".", full=False)
    p.add_argument("--name", default="generated", help="file name stem (default: generated)")
    p.set_defaults(func=cmd_generate)
    _one_line_errors(p)

    p = sub.add_parser(
        "infill",
        help="regenerate a span inside a MIDI file, with both sides in view",
        description="Regenerate START..END seconds of PIECE.mid; writes, per variation, "
        "DIR/<stem>_infill_v1.mid (the whole piece with the span new) and "
        "DIR/<stem>_infill_v1_middle.mid (the new span alone), with audio.",
    )
    p.add_argument("piece", metavar="PIECE.mid")
    p.add_argument(
        "--range",
        required=True,
        metavar="START:END",
        help="the span to regenerate, in seconds (e.g. 30:38; at most 12 s)",
    )
    _add_sampling(p, infill=True)
    _add_output(p, out_default=".", full=False)
    p.set_defaults(func=cmd_infill)
    _one_line_errors(p)

    p = sub.add_parser(
        "render",
        help="MIDI -> WAV/FLAC with a SoundFont",
        description="Synthesize a MIDI file (SoundFont; peak normalized to -1 dBFS).",
    )
    p.add_argument("input", metavar="IN.mid")
    p.add_argument("-o", "--output", required=True, metavar="OUT.wav|OUT.flac")
    _add_synth(p)
    p.set_defaults(func=cmd_render)
    _one_line_errors(p)
