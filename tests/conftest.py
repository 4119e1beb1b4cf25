import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAESTRO = pathlib.Path(
    os.environ.get("PERCEIVER_MIDI_MAESTRO", ROOT.parent / "shared/data/maestro-v3.0.0")
)


@pytest.fixture(scope="session")
def maestro_root() -> pathlib.Path:
    if not (MAESTRO / "maestro-v3.0.0.csv").exists():
        pytest.skip(f"MAESTRO v3 not found at {MAESTRO} (set PERCEIVER_MIDI_MAESTRO)")
    return MAESTRO
