"""Pictures and sounds for the web app: piano rolls (matplotlib, Agg) and audio (the pipeline's
audio path), written into a folder the app serves from.

A piano roll is one image (a pitch x time raster with one column per pixel), never one artist per
note: its cost is linear in the notes and bounded in memory, however dense the upload.

Nothing here knows about Gradio; every function takes ids or notes and a path.
"""

from __future__ import annotations

import os
import pathlib
import re

import numpy as np

from perceiver_midi.app.core.pipeline import OutputOptions, audio_bytes
from perceiver_midi.tokenizer import (
    atomic_write_bytes,
    decode,
    decode_arrays,
    midi_bytes,
    music_seconds,
)
from perceiver_midi.tokenizer import constants as C

SAMPLE_RATE = 48000  # midirenderer's own rate: no resampling, so the fastest to render
LEAD_IN_SECONDS = 3.0  # the audio of a result starts this long before the continuation
PRIME_AUDIO_MAX_SECONDS = 60.0  # the prime player plays at most the last minute of the window

GREY = "#9a9a9a"
GREY_LIGHT = "#d4d4d4"
PRIME_COLOR = "#4a6fa5"
CONT_COLOR = "#e4572e"
LINE_COLOR = "#222222"


def safe_stem(name: str, default: str = "prime") -> str:
    """A file-name stem made of ``[A-Za-z0-9_.-]`` (at most 60 characters)."""
    stem = pathlib.Path(str(name)).stem if name else ""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._-")[:60]
    return stem or default


def _write_bytes(path: pathlib.Path, data: bytes) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def write_audio_file(ids: np.ndarray, path: str | os.PathLike) -> tuple[pathlib.Path, float]:
    """Token ids -> a 16-bit stereo WAV rendered with the bundled SoundFont (the pipeline's audio
    path, at midirenderer's own rate); returns (path, seconds of audio)."""
    return write_midi_audio(midi_bytes(decode(np.asarray(ids, np.int32))), path)


def write_midi_audio(midi: bytes, path: str | os.PathLike) -> tuple[pathlib.Path, float]:
    """MIDI file bytes -> the WAV of :func:`write_audio_file`; returns (path, seconds of audio)."""
    data, seconds = audio_bytes(midi, OutputOptions(audio="wav", sample_rate=SAMPLE_RATE))
    return _write_bytes(pathlib.Path(path), data), seconds


def _note_arrays(ids) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pitch, start, end, velocity) arrays of the notes of ``ids`` (no object per note)."""
    pitch, velocity, start, end = decode_arrays(np.asarray(ids, np.int32))
    return pitch.astype(np.float64), start, end, velocity.astype(np.float64)


def _figure(width_px: int = 1000, height_px: int = 260):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / 100, height_px / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.045, 0.17, 0.945, 0.78))
    ax.set_facecolor("#fbfbfb")
    ax.tick_params(labelsize=8)
    ax.set_xlabel("seconds", fontsize=8, labelpad=1)
    return fig, ax


def _coverage(pitch, start, end, velocity, lo: int, right: float, shape: tuple[int, int]):
    """How many notes sound in each (pitch, time bin) cell of a ``shape`` raster over
    ``[0, right]`` seconds and pitches ``lo..``, and the sum of their velocities.

    Linear in the notes whatever their lengths: +1 at a note's first bin and -1 after its last
    (every note covers at least one bin), then a running sum along time.
    """
    rows, bins = shape
    scale = bins / right
    b0 = np.clip(np.floor(start * scale), 0, bins - 1).astype(np.int64)
    b1 = np.clip(np.ceil(end * scale), b0 + 1, bins).astype(np.int64)
    row = (pitch - lo).astype(np.int64) * (bins + 1)
    size = rows * (bins + 1)
    count = np.bincount(row + b0, minlength=size) - np.bincount(row + b1, minlength=size)
    vsum = np.bincount(row + b0, velocity, size) - np.bincount(row + b1, velocity, size)
    count = np.cumsum(count.reshape(rows, bins + 1), axis=1)[:, :bins]
    vsum = np.cumsum(vsum.reshape(rows, bins + 1), axis=1)[:, :bins]
    return count, vsum


def _draw_roll(ax, layers, right: float, left: float = 0.0) -> None:
    """Notes as one RGBA image: a pitch x time-bin raster over ``[left, right]`` seconds (one
    column per pixel of the axes), drawn with a single ``imshow``; cost bounded by the raster,
    not by the number of notes.

    ``layers`` are ``(pitch, start, end, velocity, color, alpha_min)``, later ones on top; a
    cell's opacity grows with the mean velocity of the notes sounding there.
    """
    if left > 0:  # the notes that overlap [left, right], in time from left
        layers = [
            (p[keep], s[keep] - left, e[keep] - left, v[keep], color, alpha)
            for p, s, e, v, color, alpha in layers
            for keep in [(e > left) & (s < right)]
        ]
        _draw_roll(ax, layers, right - left)
        for image in ax.images:
            image.set_extent((left, right, *image.get_extent()[2:]))
        return
    drawn = [layer for layer in layers if layer[0].size]
    if not drawn:
        return
    lo = int(min(layer[0].min() for layer in drawn))
    hi = int(max(layer[0].max() for layer in drawn))
    bins = max(16, int(round(ax.get_window_extent().width)))
    rgba = np.zeros((hi - lo + 1, bins, 4))
    for pitch, start, end, velocity, color, alpha_min in drawn:
        count, vsum = _coverage(pitch, start, end, velocity, lo, right, rgba.shape[:2])
        mean = np.divide(vsum, count, out=np.zeros_like(vsum), where=count > 0)
        alpha = np.where(count > 0, alpha_min + (1 - alpha_min) * np.clip(mean / 127.0, 0, 1), 0)
        a = alpha[..., None]
        below = rgba[..., 3:]
        out_a = a + below * (1 - a)
        rgb = np.asarray(_rgb(color)) * a + rgba[..., :3] * below * (1 - a)
        rgba[..., :3] = np.divide(rgb, out_a, out=np.zeros_like(rgb), where=out_a > 0)
        rgba[..., 3:] = out_a
    image = np.round(rgba * 255).astype(np.uint8)
    extent = (0, right, lo - 0.5, hi + 0.5)
    ax.imshow(
        image, extent=extent, origin="lower", aspect="auto", interpolation="nearest", zorder=2
    )


def _rgb(hex_color: str) -> tuple[float, float, float]:
    h = hex_color.lstrip("#")
    return tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[return-value]


def _pitch_limits(ax, *pitch_arrays) -> None:
    allp = np.concatenate([p for p in pitch_arrays if p.size] or [np.array([60.0])])
    lo, hi = float(allp.min()), float(allp.max())
    if hi - lo < 24:  # at least two octaves, centred
        mid = (hi + lo) / 2
        lo, hi = mid - 12, mid + 12
    ax.set_ylim(lo - 1.5, hi + 1.5)
    ax.set_ylabel("pitch", fontsize=8, labelpad=1)


def _save(fig, path: str | os.PathLike) -> pathlib.Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return _write_bytes(pathlib.Path(path), buf.getvalue())


def prime_roll_png(
    ids: np.ndarray,
    path: str | os.PathLike,
    *,
    window: tuple[float, float] | None = None,
    answers: tuple[tuple[float, float], ...] = (),
    span: tuple[float, float] | None = None,
) -> pathlib.Path:
    """The whole prime piece; notes inside ``window`` (start, end seconds) in colour, the rest
    light grey, the window shaded. When the window is part of the piece, this overview is a
    strip at the top and the window is drawn large below it (a 20 s window of a 400 s piece
    stays readable). Notes that start inside one of the ``answers`` spans (seconds: what the
    model played in call and response) are drawn in the continuation's colour. ``span`` (start,
    end seconds: the span to regenerate) is hatched in the continuation's colour, on both."""
    fig, ax = _figure()
    total = music_seconds(ids)
    pitch, start, end, vel = _note_arrays(ids)
    if pitch.size == 0:
        ax.text(0.5, 0.5, "no prime: the model starts from nothing", ha="center", va="center",
                transform=ax.transAxes, fontsize=10, color=GREY)  # fmt: skip
        ax.set_xlim(0, 1)
        ax.set_yticks([])
        return _save(fig, path)
    if window is None:
        window = (0.0, total)
    w0, w1 = window
    inside = (end > w0) & (start < w1)
    out = ~inside
    model = np.zeros_like(inside)
    for a0, a1 in answers:
        model |= (start >= a0 - 1e-9) & (start < a1 - 1e-9)
    mine, theirs = inside & ~model, inside & model

    def layers(sel_mine, sel_theirs):
        return [
            (pitch[sel_mine], start[sel_mine], end[sel_mine], vel[sel_mine], PRIME_COLOR, 0.45),
            (pitch[sel_theirs], start[sel_theirs], end[sel_theirs], vel[sel_theirs], CONT_COLOR,
             0.45),
        ]  # fmt: skip

    right = max(total, float(end.max()), w1) * 1.005 + 1e-3
    zoom = w0 > 0 or w1 < total
    if zoom:  # the overview becomes a strip above the window's own roll
        ax.set_position((0.045, 0.80, 0.945, 0.17))
        ax.set_xlabel("")
        ax.tick_params(labelsize=7, pad=1)
    outside = (pitch[out], start[out], end[out], vel[out], GREY_LIGHT, 0.9)
    _draw_roll(ax, [outside, *layers(mine, theirs)], right)
    if theirs.any():
        ax.text(1.0, 1.0, "played  ", transform=ax.transAxes, fontsize=8, va="top", ha="right",
                color=PRIME_COLOR, fontweight="bold")  # fmt: skip
        ax.text(1.0, 0.9 if not zoom else 0.6, "the model  ", transform=ax.transAxes, fontsize=8,
                va="top", ha="right", color=CONT_COLOR, fontweight="bold")  # fmt: skip
    ax.axvspan(w0, w1, color=PRIME_COLOR, alpha=0.07 if not zoom else 0.15, linewidth=0)
    for x in (w0, w1):
        ax.axvline(x, color=PRIME_COLOR, linewidth=1.2)
    ax.set_xlim(0, right)
    _shade_span(ax, span, label=not zoom)
    if not zoom:
        _pitch_limits(ax, pitch)
        return _save(fig, path)
    ax.set_yticks([])
    ax.set_ylim(float(pitch.min()) - 1.5, float(pitch.max()) + 1.5)
    big = fig.add_axes((0.045, 0.14, 0.945, 0.58))
    big.set_facecolor("#fbfbfb")
    big.tick_params(labelsize=8)
    big.set_xlabel("seconds (the prime window)", fontsize=8, labelpad=1)
    _draw_roll(big, layers(mine, theirs), max(w1, w0 + 1e-3), left=w0)
    big.set_xlim(w0, max(w1, w0 + 1e-3))
    _shade_span(big, span, label=True)
    _pitch_limits(big, pitch[inside])
    return _save(fig, path)


def _shade_span(ax, span: tuple[float, float] | None, *, label: bool) -> None:
    if span is None or not span[1] > span[0]:
        return
    ax.axvspan(*span, facecolor=CONT_COLOR, alpha=0.12, hatch="//", edgecolor=CONT_COLOR,
               linewidth=0, zorder=3)  # fmt: skip
    lo, hi = ax.get_xlim()
    if label and lo <= span[0] < hi:
        ax.text(span[0], 1.0, " span", transform=ax.get_xaxis_transform(), fontsize=8,
                va="top", ha="left", color=CONT_COLOR, fontweight="bold")  # fmt: skip


def span_roll_png(notes, middle: tuple[float, float], path: str | os.PathLike) -> pathlib.Path:
    """A regenerated span heard in place: ``notes`` (objects with pitch, velocity, start and end
    in seconds, e.g. a PrettyMIDI instrument's) greyed, those starting inside ``middle`` (start,
    end seconds: the new span) coloured, dashed lines at its edges."""
    fig, ax = _figure()
    pitch, start, end, vel = (
        np.asarray([getattr(n, k) for n in notes], np.float64)
        for k in ("pitch", "start", "end", "velocity")
    )
    m0, m1 = middle
    new = (start >= m0 - 1e-9) & (start < m1 - 1e-9)
    old = ~new
    right = max(m1, float(end.max()) if end.size else 0.0) * 1.005 + 1e-3
    _draw_roll(ax, [(pitch[old], start[old], end[old], vel[old], GREY, 0.5),
                    (pitch[new], start[new], end[new], vel[new], CONT_COLOR, 0.45)],
               right)  # fmt: skip
    for x in middle:
        ax.axvline(x, color=LINE_COLOR, linewidth=1.5, linestyle="--")
    ax.set_xlim(0, right)
    ax.text(m0, 1.0, " new span ", transform=ax.get_xaxis_transform(), fontsize=8, va="top",
            ha="left", color=LINE_COLOR)  # fmt: skip
    _pitch_limits(ax, pitch)
    return _save(fig, path)


def result_roll_png(
    prime: np.ndarray, continuation: np.ndarray, path: str | os.PathLike
) -> pathlib.Path:
    """The prime window greyed, the continuation coloured, a line where the continuation starts."""
    fig, ax = _figure()
    prime = np.asarray(prime, np.int32)
    t0 = music_seconds(prime)
    pitch, start, end, vel = _note_arrays(np.concatenate([prime, continuation]))
    is_cont = start >= t0 - 1e-9
    before = ~is_cont
    total = t0 + music_seconds(continuation)
    right = max(total, float(end.max()) if end.size else 0.0, t0 + 1.0) * 1.005
    greyed = (pitch[before], start[before], end[before], vel[before], GREY, 0.5)
    _draw_roll(
        ax,
        [greyed, (pitch[is_cont], start[is_cont], end[is_cont], vel[is_cont], CONT_COLOR, 0.45)],
        right,
    )
    ax.axvline(t0, color=LINE_COLOR, linewidth=1.5, linestyle="--")
    ax.set_xlim(0, right)
    if t0 > 0:
        ax.text(t0, 1.0, " continuation ", transform=ax.get_xaxis_transform(), fontsize=8,
                va="top", ha="left", color=LINE_COLOR)  # fmt: skip
    _pitch_limits(ax, pitch)
    return _save(fig, path)


def warm_up_ids() -> np.ndarray:
    """One note, 0.21 s long: what the warm-ups play."""
    return np.asarray([C.VELOCITY_FIRST_ID + 20, C.NOTE_ON_FIRST_ID + 60,
                       C.TIME_SHIFT_FIRST_ID + 20, C.NOTE_OFF_FIRST_ID + 60], np.int32)  # fmt: skip


def warm_up(folder: str | os.PathLike) -> None:
    """Imports matplotlib and midirenderer and loads the SoundFont once (first-request latency)."""
    folder = pathlib.Path(folder)
    ids = warm_up_ids()
    result_roll_png(ids[:0], ids, folder / "warm.png")
    write_audio_file(ids, folder / "warm.wav")
    for p in ("warm.png", "warm.wav"):
        (folder / p).unlink(missing_ok=True)
