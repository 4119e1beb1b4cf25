import gc
import os
import pathlib

import pytest

from tests.served import serving

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAESTRO = pathlib.Path(
    os.environ.get("PERCEIVER_MIDI_MAESTRO", ROOT.parent / "shared/data/maestro-v3.0.0")
)

# Linux caps a process's memory mappings (vm.max_map_count, 65,530 by default). XLA:CPU keeps
# ~15 mappings per compiled program, and jax caches every program it compiles for as long as the
# process lives: over the whole suite (~640 tests, thousands of shapes) one pytest process passes
# 65,000. XLA's JIT then cannot map a new program's memory ("LLVM compilation error: Cannot
# allocate memory"): it aborts, or frees code whose unwind tables stay registered with libgcc
# (jaxlib 0.10.2) and the next C++ exception segfaults in the unwinder. So after each test file
# the suite drops jax's caches if the process holds a third of the limit (between files, so a
# file's warmed-up web server never recompiles while it serves), and after any test at three
# quarters. A CLI run, a batch job or the web app compiles a bounded set of programs and stays far
# below the limit.
BETWEEN_FILES, ANY_TEST = 1 / 3, 3 / 4


def _drop_programs_over(share: float) -> None:
    """Drop jax's compiled programs if this process holds over ``share`` of its mapping limit."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            held = sum(1 for _ in maps)
        with open("/proc/sys/vm/max_map_count") as limit:
            over = held > share * int(limit.read())
    except (OSError, ValueError):  # no /proc: not Linux
        return
    if over:
        import jax

        jax.clear_caches()
        gc.collect()


# The files whose tests use the session's served app (``served_app``): under pytest-xdist they
# run in one worker, so the app is built once (collection checks that the list is complete).
SERVED_APP_FILES = ("test_web.py", "test_web_browser.py", "test_web_play.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's ``--dist loadfile`` (pyproject's addopts: a test file runs in one worker,
    so its module fixtures and the programs its tests share compile once), with the files of
    ``SERVED_APP_FILES`` one unit. (Not ``loadgroup``: pytest 9.2 drops its groups, issue
    pytest-dev/pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "served_app" if pathlib.PurePath(file).name in SERVED_APP_FILES else file

    return Scheduling(config, log)


def pytest_collection_modifyitems(items):
    for item in items:
        if "served_app" in item.fixturenames and item.path.name not in SERVED_APP_FILES:
            raise pytest.UsageError(
                f"{item.path.name} uses served_app: add it to SERVED_APP_FILES in tests/conftest.py"
            )


@pytest.fixture(scope="module", autouse=True)
def _bounded_programs_per_file():
    yield
    _drop_programs_over(BETWEEN_FILES)


@pytest.fixture(autouse=True)
def _bounded_programs_per_test():
    yield
    _drop_programs_over(ANY_TEST)


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


@pytest.fixture(scope="session")
def served_app(tmp_path_factory, tiny_checkpoint, tiny_infill_checkpoint):
    """A served web app with both tiny random models, every shape compiled first (as `perceiver-
    midi app` does), one for the whole session: the API tests and the browser tests of several
    files share it, so the ~2.5 minutes of compiling happen once. A test that asserts serving
    compiles nothing calls ``composer.warm_up()`` first (seconds when all is compiled), since
    the suite may have dropped jax's caches between files (``_bounded_programs_per_file``)."""
    from types import SimpleNamespace

    from perceiver_midi.model.checkpoint import load_model

    model = load_model(os.environ.get("PERCEIVER_MIDI_BROWSER_CHECKPOINT") or tiny_checkpoint)
    infill = load_model(
        os.environ.get("PERCEIVER_MIDI_BROWSER_INFILL_CHECKPOINT") or tiny_infill_checkpoint
    )
    # A queue for 20 requests at once (tests/test_web.py), two served at a time as by default.
    with serving(model, tmp_path_factory.mktemp("served-app"), infill_model=infill, warm=True,
                 max_concurrency=2, max_queue=32) as (url, composer):  # fmt: skip
        yield SimpleNamespace(url=url, composer=composer)


@pytest.fixture(scope="session")
def app_url(served_app) -> str:
    return served_app.url
