"""The musical controls of a request, parsed and checked in one place for every surface.

``--pitch-range``, ``--key``, ``--velocity-range`` and ``--max-polyphony`` (CLI), the batch
columns, the web app's Controls and ``/continue`` parameters of the same names all go through
these functions (via ``app.core.pipeline.Settings``); the sampler enforces them on every generated
token (``model.sampler.apply_controls``).

Pitches are MIDI numbers or scientific names (C4 = 60, A0 = 21, C8 = 108; ``#`` and ``b``).
Keys: ``C``, ``F#``, ``Bb major``, ``Am``, ``C#m``, ``Eb minor`` (major and natural-minor scales),
or a list of pitch classes by name or number (``C,D,E,G,A`` or ``0 2 4 7 9``).
"""

from __future__ import annotations

import re

import numpy as np

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.tokenizer import constants as C
from perceiver_midi.tokenizer.decode import velocity_from_bin

PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
NAMES_SHARP = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)  # natural minor (aeolian)
MAX_POLYPHONY = C.NUM_PITCHES  # a larger limit is no limit
ANY_KEY = "any"  # as '' or None: every pitch class
MAJOR_KEYS = ("C", "G", "D", "A", "E", "B", "F#", "F", "Bb", "Eb", "Ab", "Db")  # sharps, then flats
MINOR_KEYS = ("A", "E", "B", "F#", "C#", "G#", "D", "G", "C", "F", "Bb", "Eb")
KEY_CHOICES = (
    ANY_KEY,
    *(f"{k} major" for k in MAJOR_KEYS),
    *(f"{k} minor" for k in MINOR_KEYS),
)
BIN_VELOCITIES = tuple(velocity_from_bin(b) for b in range(1, C.NUM_VELOCITY_BINS + 1))

_NAME = re.compile(r"^([A-Ga-g])([#b]?)$")
_PITCH = re.compile(r"^([A-Ga-g])([#b]?)(-?\d+)$")
_KEY = re.compile(r"^([A-Ga-g][#b]?)\s*(m|min|minor|maj|major)?$", re.IGNORECASE)


def _semitones(letter: str, accidental: str) -> int:
    """C = 0 .. B = 11, with a sharp (+1) or flat (-1): Cb is -1, B# is 12 (octave arithmetic)."""
    return PITCH_CLASSES[letter.upper()] + {"#": 1, "b": -1, "": 0}[accidental]


def _pitch_class(name: str) -> int | None:
    m = _NAME.match(name.strip())
    return None if not m else _semitones(*m.groups()) % 12


def pitch_name(pitch: int) -> str:
    return f"{NAMES_SHARP[pitch % 12]}{pitch // 12 - 1}"


def parse_pitch(text, what: str = "pitch") -> int:
    """A MIDI pitch 0..127 from a number or a name like C4 (= 60), F#2, Bb5."""
    s = str(text).strip()
    if re.fullmatch(r"-?\d+", s):
        pitch = int(s)
    else:
        m = _PITCH.match(s)
        if not m:
            raise UserError(f"{what} {s!r}: expected a MIDI number 0-127 or a name like C4 or F#2")
        letter, accidental, octave = m.groups()
        pitch = 12 * (int(octave) + 1) + _semitones(letter, accidental)
    if not C.MIN_PITCH <= pitch <= C.MAX_PITCH:
        raise UserError(f"{what} {s!r} is outside the MIDI pitches 0-127 (C-1 to G9)")
    return pitch


def _pair(value, what: str) -> tuple[str, str]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise UserError(f"{what} {value!r}: expected two values, LOW:HIGH")
        return str(value[0]), str(value[1])
    low, sep, high = str(value).strip().partition(":")
    if not sep or not low.strip() or not high.strip():
        raise UserError(f"{what} {value!r}: expected LOW:HIGH, e.g. 48:72")
    return low, high


def _empty(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", ANY_KEY))


def parse_pitch_range(value) -> tuple[int, int] | None:
    """``"48:72"``, ``"C3:C5"`` or ``(48, 72)`` -> (48, 72); None or '' -> None (no limit)."""
    if _empty(value):
        return None
    low, high = _pair(value, "pitch range")
    lo, hi = parse_pitch(low, "pitch range: low"), parse_pitch(high, "pitch range: high")
    if lo > hi:
        raise UserError(f"pitch range {value}: low ({lo}) is above high ({hi})")
    return lo, hi


def parse_velocity_range(value) -> tuple[int, int] | None:
    """``"40:90"`` -> (40, 90), MIDI velocities 1..127 holding at least one of the 32 velocities
    the vocabulary can play (1, 5, 9, ..., 125); None or '' -> None (no limit)."""
    if _empty(value):
        return None
    low, high = _pair(value, "velocity range")
    try:
        lo, hi = int(str(low).strip()), int(str(high).strip())
    except ValueError:
        raise UserError(f"velocity range {value!r}: expected whole numbers LOW:HIGH") from None
    if not C.MIN_VELOCITY <= lo <= hi <= C.MAX_VELOCITY:
        raise UserError(f"velocity range {value}: expected 1 <= LOW <= HIGH <= 127")
    if not any(lo <= v <= hi for v in BIN_VELOCITIES):
        raise UserError(
            f"velocity range {value} holds none of the velocities the model plays "
            "(1, 5, 9, ..., 125: steps of 4)"
        )
    return lo, hi


def parse_key(value) -> str | None:
    """A key or a set of pitch classes, as its canonical text (``"A minor"``, ``"F# major"``,
    ``"C D E G A"``); None or '' -> None (every pitch class)."""
    if _empty(value):
        return None
    if isinstance(value, list | tuple):  # a JSON list of pitch classes
        value = ",".join(str(v) for v in value)
    s = " ".join(str(value).replace(",", " ").split())
    m = _KEY.match(s)
    if m and _pitch_class(m.group(1)) is not None:
        tonic, mode = m.group(1), (m.group(2) or "").lower()
        minor = mode in ("m", "min", "minor") and m.group(2) != "M"
        tonic = tonic[0].upper() + tonic[1:]
        return f"{tonic} {'minor' if minor else 'major'}"
    classes = set()
    for part in s.split(" "):
        pc = int(part) if re.fullmatch(r"\d+", part) else _pitch_class(part)
        if pc is None or not 0 <= pc < 12:
            raise UserError(
                f"key {value!r}: expected a key like C, Am, F#m, Bb major, or pitch classes "
                "like C,D,E or 0,2,4 (0-11)"
            )
        classes.add(pc)
    return " ".join(NAMES_SHARP[pc] for pc in sorted(classes))


def key_pitch_classes(key: str | None) -> tuple[int, ...] | None:
    """The pitch classes of a canonical key text (``parse_key``'s output)."""
    if key is None:
        return None
    parts = key.split(" ")
    if len(parts) == 2 and parts[1] in ("major", "minor"):
        tonic = _pitch_class(parts[0])
        scale = MINOR if parts[1] == "minor" else MAJOR
        return tuple(sorted((tonic + step) % 12 for step in scale))
    return tuple(_pitch_class(p) for p in parts)


def parse_max_polyphony(value) -> int | None:
    """Most notes sounding at once, 1..128; None, '' or 0 -> None (no limit)."""
    from perceiver_midi.app.core.pipeline import as_int  # here: pipeline imports this module

    if _empty(value):
        return None
    n = as_int(value, "max-polyphony", 0, MAX_POLYPHONY)
    return n or None


def allowed_pitches(pitch_range: tuple[int, int] | None, key: str | None) -> np.ndarray | None:
    """The pitches a NOTE_ON may start (None: all): the range intersected with the key."""
    if pitch_range is None and key is None:
        return None
    pitches = np.arange(C.NUM_PITCHES)
    if pitch_range is not None:
        pitches = pitches[(pitches >= pitch_range[0]) & (pitches <= pitch_range[1])]
    classes = key_pitch_classes(key)
    if classes is not None:
        pitches = pitches[np.isin(pitches % 12, classes)]
    if pitches.size == 0:
        lo, hi = pitch_range
        raise UserError(f"no pitch of {key} lies in the pitch range {lo}:{hi}")
    return pitches


def format_range(r: tuple[int, int] | None) -> str | None:
    return None if r is None else f"{r[0]}:{r[1]}"
