"""Magenta note-seq's MAESTRO encoding: the tokenizer tests' oracle (needs the test extra)."""

import note_seq
import numpy as np
from note_seq import performance_lib, sequences_lib

ENCODING = note_seq.PerformanceOneHotEncoding(num_velocity_bins=32, max_shift_steps=100)


def note_seq_ids(ns) -> np.ndarray:
    """Magenta's MAESTRO pipeline on a NoteSequence (drums left out, as the product asks)."""
    for i in reversed(range(len(ns.notes))):
        if ns.notes[i].is_drum:
            del ns.notes[i]
    ns = sequences_lib.apply_sustain_control_changes(ns)
    q = sequences_lib.quantize_note_sequence_absolute(ns, 100)
    perf = performance_lib.Performance(q, num_velocity_bins=32, max_shift_steps=100)
    return np.array([ENCODING.encode_event(e) + 3 for e in perf], np.int64)
