"""Build small MIDI files byte by byte (through mido) for tests."""

import io

import mido


def midi_bytes(tracks, ticks_per_beat=480):
    """tracks: list of lists of (abs_tick, mido.Message | mido.MetaMessage)."""
    f = mido.MidiFile(ticks_per_beat=ticks_per_beat, type=1)
    for events in tracks:
        t = mido.MidiTrack()
        now = 0
        for tick, msg in sorted(events, key=lambda e: e[0]):
            t.append(msg.copy(time=tick - now))
            now = tick
        f.tracks.append(t)
    buf = io.BytesIO()
    f.save(file=buf)
    return buf.getvalue()


def on(tick, pitch, vel=80, ch=0):
    return (tick, mido.Message("note_on", note=pitch, velocity=vel, channel=ch))


def off(tick, pitch, ch=0, zero_velocity_on=False):
    if zero_velocity_on:
        return (tick, mido.Message("note_on", note=pitch, velocity=0, channel=ch))
    return (tick, mido.Message("note_off", note=pitch, velocity=0, channel=ch))


def pedal(tick, value, ch=0):
    return (tick, mido.Message("control_change", control=64, value=value, channel=ch))


def program(tick, prog, ch=0):
    return (tick, mido.Message("program_change", program=prog, channel=ch))


def tempo(tick, bpm):
    return (tick, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))
