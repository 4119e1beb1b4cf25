"""Audio rendering (app/core/render.py): real SoundFont synthesis, length, rate, loudness, pedal."""

import io

import numpy as np
import pretty_midi
import pytest
import soundfile

from perceiver_midi.app.cli import main
from perceiver_midi.app.core import render
from perceiver_midi.app.core.errors import UserError


def _pm(notes, pedal=None):
    """notes: (pitch, velocity, start, end); pedal: (down, up) seconds for CC64."""
    pm = pretty_midi.PrettyMIDI(resolution=500, initial_tempo=120)
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(v, p, s, e) for p, v, s, e in notes]
    if pedal:
        piano.control_changes = [
            pretty_midi.ControlChange(64, 127, pedal[0]),
            pretty_midi.ControlChange(64, 0, pedal[1]),
        ]
    pm.instruments.append(piano)
    return pm


def _rms(audio, rate, t0, t1):
    return float(np.sqrt(np.mean(audio[int(t0 * rate) : int(t1 * rate)] ** 2)))


@pytest.mark.parametrize("rate", [22050, 44100])
def test_known_midi_renders_non_silent_audio_of_the_right_length(rate):
    pm = _pm([(60, 100, 0.0, 1.0), (64, 100, 1.0, 2.0), (67, 100, 2.0, 3.0)])
    audio = render.render(pm, sample_rate=rate)
    assert audio.dtype == np.float32 and audio.shape[1] == 2
    expected = 3.0 + render.DEFAULT_TAIL_SECONDS
    assert audio.shape[0] == round(expected * rate)
    peak = np.abs(audio).max()
    assert peak == pytest.approx(10 ** (-1 / 20), rel=1e-3)  # normalized to -1 dBFS, no clipping
    for t in (0.2, 1.2, 2.2):  # each note sounds
        assert _rms(audio, rate, t, t + 0.5) > 0.01
    assert _rms(audio, rate, 3.9, 4.0) < _rms(audio, rate, 2.2, 2.7) / 10  # and ends


def test_velocity_and_sustain_pedal_are_audible():
    loud_soft = render.render(
        _pm([(60, 120, 0.0, 1.0), (60, 30, 2.0, 3.0)]), sample_rate=22050, peak_dbfs=-1
    )
    assert _rms(loud_soft, 22050, 0.1, 0.6) > 3 * _rms(loud_soft, 22050, 2.1, 2.6)
    short = _pm([(60, 100, 0.5, 0.7), (72, 100, 3.0, 3.2)])
    pedalled = _pm([(60, 100, 0.5, 0.7), (72, 100, 3.0, 3.2)], pedal=(0.1, 2.5))
    dry = render.render(short, sample_rate=22050)
    wet = render.render(pedalled, sample_rate=22050)
    # Both are normalized by the same (second) note's peak; the pedal keeps the first ringing.
    assert _rms(wet, 22050, 1.5, 2.3) > 5 * _rms(dry, 22050, 1.5, 2.3)


def test_write_wav_and_flac_atomically(tmp_path):
    audio = render.render(_pm([(60, 90, 0.0, 0.5)]), sample_rate=32000)
    for ext in ("wav", "flac"):
        path = render.write_audio(tmp_path / f"x.{ext}", audio, 32000)
        data, rate = soundfile.read(str(path), always_2d=True)
        assert rate == 32000 and data.shape == audio.shape
        assert np.abs(data).max() < 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.flac", "x.wav"]
    assert render.audio_bytes(audio, 32000, "wav")[:4] == b"RIFF"
    assert soundfile.info(io.BytesIO(render.audio_bytes(audio, 32000, "flac"))).format == "FLAC"


def test_errors():
    with pytest.raises(UserError, match="must end in .wav or .flac"):
        render.audio_format("x.mp3")
    with pytest.raises(UserError, match="sample rate"):
        render.render(_pm([(60, 90, 0.0, 0.5)]), sample_rate=10)
    with pytest.raises(UserError, match="no such SoundFont"):
        render.render(_pm([(60, 90, 0.0, 0.5)]), soundfont="/no/such.sf2")


def test_fluidsynth_is_used_only_when_available():
    try:
        import fluidsynth  # noqa: F401
    except Exception:
        with pytest.raises(UserError, match="FluidSynth is not available"):
            render.render(_pm([(60, 90, 0.0, 0.5)]), synth="fluidsynth")
    else:
        audio = render.render(_pm([(60, 90, 0.0, 0.5)]), synth="fluidsynth", sample_rate=22050)
        assert np.abs(audio).max() > 0


def test_render_command(tmp_path, capsys):
    src = tmp_path / "in.mid"
    _pm([(60, 90, 0.0, 1.5), (67, 60, 0.5, 2.0)]).write(str(src))
    out = tmp_path / "sub" / "out.flac"
    assert main(["render", str(src), "-o", str(out), "--sample-rate", "16000"]) == 0
    assert "wrote" in capsys.readouterr().out
    info = soundfile.info(str(out))
    assert info.samplerate == 16000 and info.channels == 2
    assert info.frames == round((2.0 + render.DEFAULT_TAIL_SECONDS) * 16000)


@pytest.mark.parametrize(
    "args, message",
    [
        (["render", "missing.mid", "-o", "x.wav"], "missing.mid: no such file"),
        (["render", "README.md", "-o", "x.wav"], "not a MIDI file"),
        (["render", "examples/bach_prelude_c.mid", "-o", "x.mp3"], "must end in .wav or .flac"),
        (
            ["render", "examples/bach_prelude_c.mid", "-o", "x.wav", "--soundfont", "no.sf2"],
            "no.sf2",
        ),
    ],
)
def test_render_command_errors_are_one_line(args, message, tmp_path, capsys):
    args = [a if not a.startswith("x.") else str(tmp_path / a) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
