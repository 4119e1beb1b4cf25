"""Write the shipped example primes (our own renditions of public-domain music, not MAESTRO).

    python examples/make_examples.py

bach_prelude_c.mid: the first 16 bars of J.S. Bach's Prelude in C major (BWV 846), written as notes
here, with a little deterministic "human" timing and velocity variation and the sustain pedal.
"""

import pathlib
import random

import pretty_midi

HERE = pathlib.Path(__file__).resolve().parent

# Each bar: five pitches p1..p5 played as 16ths p1 p2 p3 p4 p5 p3 p4 p5, twice.
BWV846_BARS = [
    (60, 64, 67, 72, 76),
    (60, 62, 69, 74, 77),
    (59, 62, 67, 74, 77),
    (60, 64, 67, 72, 76),
    (60, 64, 69, 76, 81),
    (60, 62, 66, 69, 74),
    (59, 62, 67, 74, 79),
    (59, 60, 64, 67, 72),
    (57, 60, 64, 67, 72),
    (50, 57, 62, 66, 72),
    (55, 59, 62, 67, 71),
    (55, 58, 64, 67, 73),
    (53, 57, 62, 69, 74),
    (53, 56, 62, 65, 71),
    (52, 55, 60, 67, 72),
    (52, 53, 57, 60, 65),
]


def bach_prelude(seed: int = 846) -> pretty_midi.PrettyMIDI:
    rng = random.Random(seed)
    sixteenth = 60.0 / 70 / 4  # 70 quarter notes per minute
    pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=70)
    piano = pretty_midi.Instrument(program=0, name="Piano")
    t = 0.0
    for bar in BWV846_BARS:
        for _half in range(2):
            half_start = t
            pattern = [bar[0], bar[1], bar[2], bar[3], bar[4], bar[2], bar[3], bar[4]]
            for k, pitch in enumerate(pattern):
                start = t + rng.uniform(-0.008, 0.008)
                if k == 0:  # the bass holds for the half bar
                    end = half_start + 8 * sixteenth - 0.02
                elif k == 1:  # the tenor holds for seven 16ths
                    end = half_start + 8 * sixteenth - 0.03
                else:
                    end = start + sixteenth * 0.9
                accent = 8 if k in (0, 5) else 0
                velocity = max(1, min(127, 58 + accent + rng.randint(-6, 6)))
                piano.notes.append(pretty_midi.Note(velocity, pitch, max(0.0, start), end))
                t += sixteenth
            # Pedal down after each half-bar's bass note, up just before the next.
            piano.control_changes.append(pretty_midi.ControlChange(64, 100, half_start + 0.05))
            piano.control_changes.append(pretty_midi.ControlChange(64, 0, t - 0.04))
    pm.instruments.append(piano)
    return pm


def main() -> None:
    out = HERE / "bach_prelude_c.mid"
    bach_prelude().write(str(out))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
