"""Every constant of the token vocabulary and of the MAESTRO encoding, in one place.

The vocabulary is note-seq's ``PerformanceOneHotEncoding(num_velocity_bins=32,
max_shift_steps=100)`` shifted by three reserved ids (as in the official Perceiver AR code):

    id 0          PAD
    id 1          EOS
    id 2          SOS
    ids 3..130    NOTE_ON   pitch 0..127
    ids 131..258  NOTE_OFF  pitch 0..127
    ids 259..358  TIME_SHIFT 1..100 steps of 10 ms
    ids 359..390  VELOCITY  bin 1..32
"""

# Reserved ids.
PAD_ID = 0
EOS_ID = 1
SOS_ID = 2
NUM_RESERVED = 3

# Encoding parameters (Magenta's MAESTRO setup).
STEPS_PER_SECOND = 100  # 10 ms per time step
MAX_SHIFT_STEPS = 100  # the longest single TIME_SHIFT: 1 s
NUM_VELOCITY_BINS = 32
MIN_PITCH = 0
MAX_PITCH = 127
NUM_PITCHES = MAX_PITCH - MIN_PITCH + 1
MIN_VELOCITY = 1
MAX_VELOCITY = 127
# note-seq: ceil((127 - 1 + 1) / 32) = 4 velocities per bin.
VELOCITY_BIN_SIZE = -(-(MAX_VELOCITY - MIN_VELOCITY + 1) // NUM_VELOCITY_BINS)
SUSTAIN_CONTROL = 64  # CC64 >= 64 means pedal down
SUSTAIN_THRESHOLD = 64
QUANTIZE_CUTOFF = 0.5  # note-seq rounds half up: int(seconds * 100 + 0.5)
DRUM_CHANNEL = 9  # zero-based MIDI channel 10; its notes are drums and are left out

# Event offsets inside the note-seq one-hot encoding (before the reserved shift).
NOTE_ON_OFFSET = 0
NOTE_OFF_OFFSET = NOTE_ON_OFFSET + NUM_PITCHES  # 128
TIME_SHIFT_OFFSET = NOTE_OFF_OFFSET + NUM_PITCHES  # 256
VELOCITY_OFFSET = TIME_SHIFT_OFFSET + MAX_SHIFT_STEPS  # 356
NUM_EVENTS = VELOCITY_OFFSET + NUM_VELOCITY_BINS  # 388

# Token ids (event index + NUM_RESERVED).
NOTE_ON_FIRST_ID = NUM_RESERVED + NOTE_ON_OFFSET  # 3: NOTE_ON pitch 0
NOTE_OFF_FIRST_ID = NUM_RESERVED + NOTE_OFF_OFFSET  # 131: NOTE_OFF pitch 0
TIME_SHIFT_FIRST_ID = NUM_RESERVED + TIME_SHIFT_OFFSET  # 259: shift of 1 step
TIME_SHIFT_LAST_ID = TIME_SHIFT_FIRST_ID + MAX_SHIFT_STEPS - 1  # 358: shift of 100 steps
VELOCITY_FIRST_ID = NUM_RESERVED + VELOCITY_OFFSET  # 359: velocity bin 1
VOCAB_SIZE = NUM_RESERVED + NUM_EVENTS  # 391

# Decoding: the General MIDI program of the written piano track.
ACOUSTIC_GRAND_PIANO = 0

# Limits on what we accept, so that bad or hostile input costs bounded time and memory.
MAX_FILE_BYTES = 32 * 1024 * 1024  # largest MAESTRO file is well under 1 MiB
MAX_TRACKS = 1024
MAX_SECONDS = 4 * 3600.0  # longest MAESTRO piece is under an hour
MAX_TOKENS = 4_000_000  # a 4-hour dense piece is under 1M tokens
# Checked before any work that is more than linear, so that any file is accepted or refused in
# bounded time and memory. A MAESTRO file has well under 100k notes and 200k MIDI events.
MAX_EVENTS = 8_000_000  # note, pedal, program and tempo events read (also: pedal events shared)
MAX_NOTES = 4_000_000  # notes before the pedal is applied (each surviving note is two tokens)
MAX_IDS_IN = 8_000_000  # decode refuses longer id arrays
