"""Installed like a library (issue 22): the wheel holds one import namespace, ``perceiver_midi``
(nothing generic such as ``app``, ``model`` or ``tokenizer`` lands in site-packages), the shipped
model as package data (the default, which also infills; not the previous default nor the
training candidates beside it) and the web app's files. Installed in a fresh venv outside the
checkout, ``perceiver-midi continue`` and ``perceiver-midi infill`` work from another folder.

The wheel is built by pip from a copy of the tracked files (so no stale ``build/`` of the checkout
leaks in); the fresh venv takes its dependencies from the package index (about a minute with
pip's cache). The install test is skipped when no index can be reached, or when
PERCEIVER_MIDI_SKIP_PACKAGING is set.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDERS = ("app", "model", "tokenizer")  # perceiver_midi.<folder> (pyproject.toml: package-dir)
SHIPPED_CHECKPOINTS = ("checkpoints/maestro-cpu-infill",)  # model.checkpoint.DEFAULT_NAME
NETWORK_ERRORS = (
    "NewConnectionError",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Could not fetch URL",
    "ConnectTimeoutError",
    "No matching distribution found",
)

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("PERCEIVER_MIDI_SKIP_PACKAGING")), reason="PERCEIVER_MIDI_SKIP_PACKAGING"
)


def _clean_env() -> dict:
    """The environment without this venv's traces (a fresh venv must not see the checkout)."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PERCEIVER_MIDI_CHECKPOINT"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def _copy_tracked(dst: pathlib.Path) -> None:
    """The files git tracks (a fresh clone's tree), else the tree less what is never packaged."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
    if not files:
        ignore = shutil.ignore_patterns(".git", ".venv", "work", "build", "__pycache__", "gpu_kit")
        shutil.copytree(ROOT, dst, ignore=ignore)
        return
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def _pip(python, *args, what: str, env=None, timeout: int) -> None:
    """``python -m pip ARGS -q``; skips the test when no package index answers."""
    cmd = [str(python), "-m", "pip", *map(str, args), "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0 and any(e in proc.stderr for e in NETWORK_ERRORS):
        pytest.skip(f"cannot {what}: no package index ({proc.stderr.strip()[-200:]})")
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    src = tmp_path_factory.mktemp("src")
    _copy_tracked(src)
    out = tmp_path_factory.mktemp("wheel")
    _pip(sys.executable, "wheel", src, "--no-deps", "-w", out, what="build the wheel", timeout=600)
    (path,) = out.glob("perceiver_midi-*.whl")
    return path


def test_wheel_holds_the_namespace_the_default_model_and_the_web_files(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.startswith("perceiver_midi-") and t.endswith(".dist-info")}
    assert tops - dist_info == {"perceiver_midi"} and len(dist_info) == 1, tops
    assert "perceiver_midi/__init__.py" not in names  # a PEP 420 namespace (pyproject.toml)

    # Every module of app/, model/, tokenizer/ (a new subpackage must be listed in pyproject).
    for folder in FOLDERS:
        package = f"perceiver_midi/{folder}"
        here = {p.relative_to(ROOT / folder).as_posix() for p in (ROOT / folder).rglob("*.py")}
        packed = {n[len(package) + 1 :] for n in names if n.startswith(package + "/")}
        missing = {m for m in here if "__pycache__" not in m} - packed
        assert not missing, f"{folder}/: not in the wheel: {sorted(missing)}"
    assert {"perceiver_midi/app/web/play.js", "perceiver_midi/app/web/play.css"} <= set(names)

    # The shipped model (the default, which infills too), all of it; nothing else of
    # checkpoints/ (the previous default and training candidates stay out).
    shipped = set()
    for folder in SHIPPED_CHECKPOINTS:
        shipped |= {
            "perceiver_midi/" + p.relative_to(ROOT).as_posix()
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        needed = ("config.json", "MODEL_CARD.md", "params/_METADATA", "params/manifest.ocdbt")
        assert {f"perceiver_midi/{folder}/{f}" for f in needed} <= shipped
    assert shipped <= set(names)
    under = {n for n in names if n.startswith("perceiver_midi/checkpoints/")}
    assert under - shipped == {"perceiver_midi/checkpoints/__init__.py"}


def test_wheel_installs_in_a_fresh_venv_and_continues_a_piece(wheel, tmp_path_factory):
    base = tmp_path_factory.mktemp("installed")
    assert ROOT not in base.parents  # outside the checkout
    venv, elsewhere, out = base / "venv", base / "elsewhere", base / "out"
    elsewhere.mkdir()
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env, timeout=300)
    python, cli = venv / "bin" / "python", venv / "bin" / "perceiver-midi"
    _pip(python, "install", wheel, what="install the dependencies", env=env, timeout=1200)

    def run(*cmd, timeout=600):
        return subprocess.run(
            [str(c) for c in cmd], cwd=elsewhere, capture_output=True, text=True, env=env,
            timeout=timeout,
        )  # fmt: skip

    # Nothing generic is importable; the package's data is found where it was installed.
    for name in ("app", "model", "tokenizer", "checkpoints"):
        proc = run(python, "-c", f"import {name}")
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, (name, proc.stderr)
    probe = (
        "import pathlib, perceiver_midi.model.checkpoint as c, perceiver_midi.app.web.play as w\n"
        "print(c.default_checkpoint())\n"
        "print(all((w.HERE / f).is_file() for f in ('play.js', 'play.css')))\n"
    )
    proc = run(python, "-c", probe)
    assert proc.returncode == 0, proc.stderr
    default, web_files = proc.stdout.split()
    site = pathlib.Path(default).resolve()
    assert venv.resolve() in site.parents and site.name == "maestro-cpu-infill", default
    assert web_files == "True"

    # The main job: a continuation with the shipped model, from another folder.
    example = ROOT / "examples" / "bach_prelude_c.mid"
    proc = run(cli, "continue", example, "--seconds", "10", "--out", out)
    assert proc.returncode == 0, proc.stderr
    midi, audio = out / "bach_prelude_c_v1.mid", out / "bach_prelude_c_v1.wav"
    assert midi.read_bytes()[:4] == b"MThd"
    assert audio.read_bytes()[:4] == b"RIFF" and audio.stat().st_size > 44

    # Infilling with the same shipped model, from the same folder.
    proc = run(cli, "infill", example, "--range", "10:13", "--audio", "none", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "bach_prelude_c_infill_v1.mid").read_bytes()[:4] == b"MThd"
