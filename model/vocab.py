"""The few vocabulary constants the model and the sampler need.

The tokenizer package holds the authoritative copy (a test checks that they agree). Ids follow the
official Perceiver AR code: reserved ids first, then note-seq's ``PerformanceOneHotEncoding`` events
(NOTE_ON 0-127, NOTE_OFF 0-127, TIME_SHIFT 1-100 steps, VELOCITY 1-32), token id = 3 + event index.
"""

PAD_ID = 0
EOS_ID = 1
SOS_ID = 2
NUM_RESERVED = 3
VOCAB_SIZE = 391

# NOTE_ON pitch p is id 3 + p; NOTE_OFF pitch p is id 131 + p.
NOTE_ON_FIRST_ID = 3
NOTE_OFF_FIRST_ID = 131
NUM_PITCHES = 128

# TIME_SHIFT events: id 259 is a shift of 1 step, id 358 a shift of 100 steps; one step is 10 ms.
TIME_SHIFT_FIRST_ID = 259
TIME_SHIFT_LAST_ID = 358
STEPS_PER_SECOND = 100

# VELOCITY events: id 359 is bin 1, id 390 bin 32; bin b plays velocity 1 + 4 (b - 1) (note-seq).
VELOCITY_FIRST_ID = 359
NUM_VELOCITY_BINS = 32
VELOCITY_BIN_SIZE = 4
DEFAULT_VELOCITY = 100  # of NOTE_ONs before any VELOCITY (note-seq's default)

# Infilling sentinels (``Config.infill``; ``model/infill.py``): input-only ids after the 391 of the
# vocabulary. The model reads them and never predicts them (its logits stay VOCAB_SIZE wide).
# A prompt is [SOS, GAP, <gap length as TIME_SHIFTs>, SUFFIX, <after the gap>, PREFIX,
# <before the gap>, MIDDLE] and the model writes the middle.
FIM_GAP_ID = 391
FIM_SUFFIX_ID = 392
FIM_PREFIX_ID = 393
FIM_MIDDLE_ID = 394
NUM_SENTINELS = 4
INPUT_VOCAB_SIZE = VOCAB_SIZE + NUM_SENTINELS  # ids a model with ``infill`` embeds
