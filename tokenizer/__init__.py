"""MAESTRO performance tokenizer: MIDI <-> token ids identical to note-seq's (+3 reserved ids).

    from perceiver_midi.tokenizer import encode, decode
    ids = encode("piece.mid")      # numpy int32 array
    pm = decode(ids)               # pretty_midi.PrettyMIDI

No JAX here.
"""

from perceiver_midi.tokenizer import constants
from perceiver_midi.tokenizer.decode import (
    Note,
    atomic_write_bytes,
    decode,
    decode_arrays,
    decode_notes,
    decode_to_note_sequence,
    midi_bytes,
    notes_to_pretty_midi,
    write_midi,
)
from perceiver_midi.tokenizer.encode import apply_sustain, encode, ids_from_table
from perceiver_midi.tokenizer.midi import MidiError, NoteTable, read_midi
from perceiver_midi.tokenizer.windows import (
    cut_last_seconds,
    cut_last_tokens,
    cut_range,
    music_seconds,
    shift_tokens,
    token_steps,
)

__all__ = [
    "MidiError",
    "Note",
    "NoteTable",
    "apply_sustain",
    "atomic_write_bytes",
    "constants",
    "cut_last_seconds",
    "cut_last_tokens",
    "cut_range",
    "decode",
    "decode_arrays",
    "decode_notes",
    "decode_to_note_sequence",
    "encode",
    "ids_from_table",
    "midi_bytes",
    "notes_to_pretty_midi",
    "music_seconds",
    "read_midi",
    "shift_tokens",
    "token_steps",
    "write_midi",
]
