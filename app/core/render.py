"""MIDI -> audio with a real SoundFont synthesizer, written as WAV or FLAC.

    audio = render(pm_or_path_or_bytes, sample_rate=44100)   # float32 [frames, 2], peak -1 dBFS
    write_audio("out.wav", audio, 44100)                      # atomic (temp file + rename)

The default synthesizer is ``midirenderer`` (a self-contained Rust wheel, no system library)
with pretty_midi's bundled General MIDI SoundFont ``TimGM6mb.sf2``; ``soundfont=`` takes a better
one. It plays the MIDI file as written: velocities, the sustain pedal (CC64) and timing are
honoured (our decoded MIDI has the pedal already baked into note lengths). FluidSynth (through
pyfluidsynth and pretty_midi) is used when asked for with ``synth="fluidsynth"`` and installed.

midirenderer synthesizes at 48 kHz and stops at the last MIDI event, so we extend the file's end
by ``tail`` seconds (the release of the last notes rings out), resample to the requested rate
(scipy's polyphase filter) and scale the peak to ``peak_dbfs`` (-1 dBFS: never clipped).
"""

from __future__ import annotations

import functools
import io
import math
import os
import pathlib

import numpy as np

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.tokenizer import MidiError, atomic_write_bytes, midi_bytes, read_midi

DEFAULT_SAMPLE_RATE = 44100
DEFAULT_TAIL_SECONDS = 1.0
DEFAULT_PEAK_DBFS = -1.0
SYNTHS = ("midirenderer", "fluidsynth")
FORMATS = {"wav": "WAV", "flac": "FLAC"}
_MIDIRENDERER_RATE = 48000  # what midirenderer.render_wave_from produces
_MIN_RATE, _MAX_RATE = 8000, 192000


def default_soundfont() -> pathlib.Path:
    """pretty_midi's bundled General MIDI SoundFont (TimGM6mb.sf2, ~6 MB)."""
    import pretty_midi

    return pathlib.Path(pretty_midi.__file__).resolve().parent / "TimGM6mb.sf2"


def soundfont_bytes(soundfont: str | os.PathLike | bytes | None = None) -> bytes:
    """The bytes of ``soundfont`` (a path, bytes, or None for the default)."""
    if isinstance(soundfont, bytes | bytearray):
        return bytes(soundfont)
    path = default_soundfont() if soundfont is None else pathlib.Path(soundfont)
    return _read_soundfont(str(path))


@functools.lru_cache(maxsize=2)
def _read_soundfont(path: str) -> bytes:
    p = pathlib.Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such SoundFont file")
    data = p.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise UserError(f"{p}: not a SoundFont (.sf2) file")
    return data


def _midi_bytes(midi) -> tuple[bytes, str]:
    """(bytes, label) of a MIDI path, bytes or PrettyMIDI."""
    if isinstance(midi, bytes | bytearray):
        return bytes(midi), "<midi bytes>"
    if isinstance(midi, str | os.PathLike):
        path = pathlib.Path(midi)
        if not path.exists():
            raise UserError(f"{path}: no such file")
        if path.is_dir():
            raise UserError(f"{path}: is a directory, not a MIDI file")
        try:
            return path.read_bytes(), str(path)
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror})") from None
    if hasattr(midi, "instruments"):
        return midi_bytes(midi), "<PrettyMIDI>"
    raise TypeError(f"expected a MIDI path, bytes or PrettyMIDI, got {type(midi).__name__}")


def _with_tail(data: bytes, tail: float, label: str) -> tuple[bytes, float]:
    """Moves the end of the MIDI file ``tail`` seconds after its last event; returns (bytes, the
    new end time in seconds). Raises UserError for a file mido cannot read."""
    import mido

    try:
        mf = mido.MidiFile(file=io.BytesIO(data))
    except Exception as exc:  # mido raises OSError/EOFError/ValueError/KeyError on bad data
        raise UserError(f"{label}: not a readable MIDI file ({exc})") from None
    if mf.type == 2:
        raise UserError(f"{label}: type 2 MIDI files (independent tracks) are not supported")
    # The tempo in force at the end (type 0/1: tempo events are global).
    events = []  # (abs tick, track index, message)
    for ti, track in enumerate(mf.tracks):
        tick = 0
        for msg in track:
            tick += msg.time
            events.append((tick, ti, msg))
    tempo = 500000
    for _, _, msg in sorted(events, key=lambda e: e[0]):
        if msg.type == "set_tempo":
            tempo = msg.tempo
    # Every track ends at its last event; the longest then rings on for ``tail`` seconds.
    for track in mf.tracks:
        if track and track[-1].type == "end_of_track":
            track[-1] = track[-1].copy(time=0)
        else:
            track.append(mido.MetaMessage("end_of_track", time=0))
    end_seconds = mf.length
    if mf.tracks:
        ends = [sum(m.time for m in t) for t in mf.tracks]
        track = mf.tracks[int(np.argmax(ends))]
        extra = int(round(mido.second2tick(max(0.0, tail), mf.ticks_per_beat, tempo)))
        track[-1] = track[-1].copy(time=extra)
        end_seconds += mido.tick2second(extra, mf.ticks_per_beat, tempo)  # .length skips EOT
    out = io.BytesIO()
    mf.save(file=out)
    data = out.getvalue()
    return data, end_seconds


def _has_notes(data: bytes) -> bool:
    try:
        return len(read_midi(data)) > 0
    except MidiError:
        return True  # let the synthesizer decide; mido already parsed it


def _resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return audio
    from scipy.signal import resample_poly

    g = math.gcd(rate_in, rate_out)
    return resample_poly(audio, rate_out // g, rate_in // g, axis=0).astype(np.float32)


def normalize(audio: np.ndarray, peak_dbfs: float = DEFAULT_PEAK_DBFS) -> np.ndarray:
    """Scales so that the largest sample is ``peak_dbfs`` (silence stays silence)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        return audio.astype(np.float32)
    return (audio * (10.0 ** (peak_dbfs / 20.0) / peak)).astype(np.float32)


def render(
    midi,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    soundfont: str | os.PathLike | bytes | None = None,
    synth: str = "midirenderer",
    tail: float = DEFAULT_TAIL_SECONDS,
    peak_dbfs: float = DEFAULT_PEAK_DBFS,
) -> np.ndarray:
    """Synthesizes ``midi`` (a path, MIDI bytes or PrettyMIDI) to float32 stereo ``[frames, 2]``
    at ``sample_rate``, lasting the MIDI's end time + ``tail`` seconds, peak at ``peak_dbfs``."""
    if not _MIN_RATE <= int(sample_rate) <= _MAX_RATE:
        raise UserError(f"sample rate must be in {_MIN_RATE}..{_MAX_RATE} Hz, got {sample_rate}")
    if synth not in SYNTHS:
        raise UserError(f"unknown synthesizer {synth!r}; choose from {', '.join(SYNTHS)}")
    data, label = _midi_bytes(midi)
    data, end_seconds = _with_tail(data, tail, label)
    frames = int(round(end_seconds * sample_rate))
    if not _has_notes(data):
        return np.zeros((frames, 2), np.float32)
    if synth == "fluidsynth":
        audio = _render_fluidsynth(data, sample_rate, soundfont)
    else:
        audio = _render_midirenderer(data, soundfont_bytes(soundfont), label)
        audio = _resample(audio, _MIDIRENDERER_RATE, int(sample_rate))
    # Exact length: the MIDI's end + tail (the synthesizers may differ by a few frames).
    if audio.shape[0] < frames:
        audio = np.concatenate([audio, np.zeros((frames - audio.shape[0], 2), audio.dtype)])
    return normalize(audio[:frames], peak_dbfs)


def _render_midirenderer(data: bytes, sf2: bytes, label: str) -> np.ndarray:
    import midirenderer
    import soundfile

    try:
        wav = midirenderer.render_wave_from(sf2, data)
    except (ValueError, RuntimeError) as exc:
        raise UserError(f"{label}: cannot render ({exc})") from None
    audio, rate = soundfile.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    if rate != _MIDIRENDERER_RATE:  # a future midirenderer may change it; resample from its rate
        audio = _resample(audio, rate, _MIDIRENDERER_RATE)
    if audio.shape[1] == 1:
        audio = np.repeat(audio, 2, axis=1)
    return audio[:, :2]


def _render_fluidsynth(data: bytes, sample_rate: int, soundfont) -> np.ndarray:
    try:
        import fluidsynth  # noqa: F401  (pyfluidsynth; needs the libfluidsynth system library)
    except Exception:
        raise UserError(
            "FluidSynth is not available: pip install pyfluidsynth and install libfluidsynth "
            "(or use the default synthesizer, midirenderer)"
        ) from None
    import pretty_midi

    if isinstance(soundfont, bytes | bytearray):
        raise UserError("FluidSynth needs a SoundFont path, not bytes")
    sf2 = str(default_soundfont() if soundfont is None else soundfont)
    soundfont_bytes(sf2)  # validates the path
    pm = pretty_midi.PrettyMIDI(io.BytesIO(data))
    mono = pm.fluidsynth(fs=int(sample_rate), sf2_path=sf2).astype(np.float32)
    return np.stack([mono, mono], axis=1)


def audio_bytes(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    """Encodes float audio as 16-bit WAV or FLAC bytes."""
    import soundfile

    if fmt not in FORMATS:
        raise UserError(f"unknown audio format {fmt!r}; choose from {', '.join(FORMATS)}")
    buf = io.BytesIO()
    clipped = np.clip(audio, -1.0, 1.0)  # normalize() already keeps the peak below 1
    soundfile.write(buf, clipped, int(sample_rate), format=FORMATS[fmt], subtype="PCM_16")
    return buf.getvalue()


def audio_format(path: str | os.PathLike) -> str:
    """'wav' or 'flac' from the file extension (UserError otherwise)."""
    ext = pathlib.Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise UserError(f"{path}: output must end in .wav or .flac")
    return ext


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int) -> pathlib.Path:
    """Writes WAV or FLAC (by extension) atomically."""
    data = audio_bytes(audio, sample_rate, audio_format(path))
    atomic_write_bytes(path, data)
    return pathlib.Path(path)


def render_file(
    midi,
    out: str | os.PathLike,
    *,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    soundfont: str | os.PathLike | bytes | None = None,
    synth: str = "midirenderer",
) -> tuple[pathlib.Path, float]:
    """Renders ``midi`` to ``out`` (.wav/.flac); returns (path, audio seconds)."""
    audio_format(out)
    audio = render(midi, sample_rate=sample_rate, soundfont=soundfont, synth=synth)
    return write_audio(out, audio, sample_rate), audio.shape[0] / sample_rate
