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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> pathlib.Path:
    """A tiny random Perceiver AR saved with ``model.checkpoint.save_model`` (app tests)."""
    from flax import nnx

    from perceiver_midi.model.checkpoint import save_model
    from perceiver_midi.model.config import get_config
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model(PerceiverAR(get_config("tiny"), rngs=nnx.Rngs(0)), path, metadata={"test": True})
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The tiny checkpoint loaded (the same cached object the CLI gets from ``load_model``)."""
    from perceiver_midi.model.checkpoint import load_model

    return load_model(tiny_checkpoint)


@pytest.fixture(scope="session")
def tiny_infill_checkpoint(tmp_path_factory) -> pathlib.Path:
    """A tiny random Perceiver AR with infilling sentinels (``config.infill``; random logits:
    every id matters), saved with ``save_model`` (infilling tests, the web app's span mode)."""
    import jax
    from flax import nnx

    from perceiver_midi.model.checkpoint import save_model
    from perceiver_midi.model.config import get_config
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    model = PerceiverAR(get_config("tiny", infill=True), rngs=nnx.Rngs(0))
    kernel = model.logits.kernel
    kernel[...] = 0.5 * jax.random.normal(jax.random.key(1), kernel.shape)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-infill"
    save_model(model, path)
    return path


@pytest.fixture(scope="session")
def tiny_infill(tiny_infill_checkpoint):
    """The tiny infilling checkpoint loaded (``load_model``'s cached object)."""
    from perceiver_midi.model.checkpoint import load_model

    return load_model(tiny_infill_checkpoint)


@pytest.fixture(scope="session")
def short_prime(tmp_path_factory) -> pathlib.Path:
    """A 2-second, 8-note piano MIDI file (about 30 tokens: it fits the tiny model's context)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(resolution=500, initial_tempo=120)
    piano = pretty_midi.Instrument(program=0)
    for k, pitch in enumerate([60, 64, 67, 72, 67, 64, 62, 65]):
        piano.notes.append(pretty_midi.Note(70 + 5 * k, pitch, 0.25 * k, 0.25 * k + 0.4))
    pm.instruments.append(piano)
    path = tmp_path_factory.mktemp("primes") / "short.mid"
    pm.write(str(path))
    return path
