"""Musical controls: parsing (app/core/controls.py) and enforcement in the sampler on every
token."""

import json
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from perceiver_midi.app.core import controls
from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.pipeline import DEFAULT_MAX_NOTE_SECONDS, Settings
from perceiver_midi.model import vocab
from perceiver_midi.model.config import get_config
from perceiver_midi.model.perceiver_ar import PerceiverAR
from perceiver_midi.model.sampler import bin_velocity, sample
from perceiver_midi.model.vocab import DEFAULT_VELOCITY, VELOCITY_FIRST_ID
from perceiver_midi.tokenizer import decode_notes

TINY = get_config("tiny")
ON, OFF, SHIFT = vocab.NOTE_ON_FIRST_ID, vocab.NOTE_OFF_FIRST_ID, vocab.TIME_SHIFT_FIRST_ID - 1

# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, pitch",
    [("60", 60), ("C4", 60), ("A0", 21), ("C8", 108), ("F#2", 42), ("Gb2", 42), ("Bb5", 82),
     ("c-1", 0), ("G9", 127), (" 72 ", 72)],
)  # fmt: skip
def test_pitch_names(text, pitch):
    assert controls.parse_pitch(text) == pitch


@pytest.mark.parametrize(
    "text, key, classes",
    [
        ("C", "C major", (0, 2, 4, 5, 7, 9, 11)),
        ("Am", "A minor", (0, 2, 4, 5, 7, 9, 11)),
        ("a minor", "A minor", (0, 2, 4, 5, 7, 9, 11)),
        ("F#m", "F# minor", (1, 2, 4, 6, 8, 9, 11)),
        ("Bb major", "Bb major", (0, 2, 3, 5, 7, 9, 10)),
        ("Ebm", "Eb minor", (1, 3, 5, 6, 8, 10, 11)),
        ("C,D,E", "C D E", (0, 2, 4)),
        ("0 7 4", "C E G", (0, 4, 7)),
        (["C", "Eb"], "C D#", (0, 3)),
        ("any", None, None),
        ("", None, None),
    ],
)
def test_keys(text, key, classes):
    assert controls.parse_key(text) == key
    assert controls.key_pitch_classes(key) == classes


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"pitch_range": "90:30"}, "pitch range 90:30: low (90) is above high (30)"),
        ({"pitch_range": "48"}, "expected LOW:HIGH"),
        ({"pitch_range": "C4:H4"}, "expected a MIDI number 0-127 or a name"),
        ({"pitch_range": "0:128"}, "outside the MIDI pitches"),
        ({"key": "H"}, "expected a key like C, Am"),
        ({"key": "C,13"}, "pitch classes"),
        ({"velocity_range": "90:40"}, "1 <= LOW <= HIGH <= 127"),
        ({"velocity_range": "2:4"}, "holds none of the velocities"),
        ({"velocity_range": "a:b"}, "whole numbers"),
        ({"max_polyphony": -1}, "max-polyphony must be in [0, 128]"),
        ({"max_polyphony": "inf"}, "max-polyphony"),
        ({"pitch_range": "61:61", "key": "C"}, "no pitch of C major lies in the pitch range"),
    ],
)
def test_bad_controls_are_one_line(settings, message):
    with pytest.raises(UserError) as err:
        Settings(**settings)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_settings_store_controls_canonically():
    s = Settings(pitch_range="C3:C5", key="Am", velocity_range=" 40:90", max_polyphony="4")
    assert (s.pitch_range, s.key, s.velocity_range, s.max_polyphony) == ((48, 72), "A minor",
                                                                         (40, 90), 4)  # fmt: skip
    d = s.to_dict()
    assert (d["pitch_range"], d["key"], d["velocity_range"], d["max_polyphony"]) == (
        "48:72", "A minor", "40:90", 4)  # fmt: skip
    assert Settings(**d | {"tokens": None}).sampler_key() == s.sampler_key()  # round trip
    assert list(s.allowed_pitches()) == [
        p for p in range(48, 73) if p % 12 in (0, 2, 4, 5, 7, 9, 11)
    ]
    off = Settings(max_polyphony=0, key="any", pitch_range="", velocity_range=None)
    assert off.allowed_pitches() is None and off.max_polyphony is None


# -- enforcement: a fake model that wants to break every control -----------------------------


class _Cache(NamedTuple):
    calls: jax.Array


class Rebel(nnx.Module):
    """Fixed logits that favour NOTE_ONs of every pitch and VELOCITY tokens of every bin, with
    some NOTE_OFFs and TIME_SHIFTs: unconstrained it leaves any range, key, dynamics and
    polyphony limit within a few tokens."""

    def __init__(self):
        self.config = TINY

    def init_cache(self, batch_size, *, num_latents, cross_capacity):
        return _Cache(jnp.zeros((batch_size,), jnp.int32))

    def encode_prompt(self, cache, tokens_BxT):
        return cache

    def _logits(self, b):
        x = jnp.full((vocab.VOCAB_SIZE,), -1e9, jnp.float32)
        x = x.at[ON : ON + 128].set(2.0).at[OFF : OFF + 128].set(1.0)
        x = x.at[SHIFT + 1 : SHIFT + 101].set(-1.0).at[VELOCITY_FIRST_ID:].set(1.5)
        return jnp.broadcast_to(x, (b, vocab.VOCAB_SIZE))

    def refill(self, cache, tokens_BxW, *, fill):
        return self._logits(tokens_BxW.shape[0]), cache

    def decode_step(self, cache, token_B):
        return self._logits(token_B.shape[0]), cache


def _check_every_token(prompt, out, allowed, vel_range, max_poly):
    """Replays prompt + output as the sampler's state and checks each generated token."""
    counts = np.zeros(128, int)
    velocity = DEFAULT_VELOCITY
    for t in prompt:
        if ON <= t < ON + 128:
            counts[t - ON] += 1
        elif OFF <= t < OFF + 128:
            counts[t - OFF] = max(0, counts[t - OFF] - 1)
        elif t >= VELOCITY_FIRST_ID:
            velocity = int(bin_velocity(t))
    lo, hi = vel_range or (1, 127)
    for t in out.tolist():
        if ON <= t < ON + 128:
            assert allowed is None or t - ON in allowed, f"pitch {t - ON} not allowed"
            assert lo <= velocity <= hi, f"a note at velocity {velocity}"
            assert max_poly is None or counts.sum() < max_poly, "polyphony exceeded"
            counts[t - ON] += 1
        elif OFF <= t < OFF + 128:
            assert counts[t - OFF] > 0, "NOTE_OFF of a silent pitch"
            counts[t - OFF] -= 1
        elif t >= VELOCITY_FIRST_ID:
            velocity = int(bin_velocity(t))
            assert lo <= velocity <= hi, f"VELOCITY {velocity} outside {lo}:{hi}"


def test_every_control_holds_on_every_token_for_random_settings():
    rng = np.random.default_rng(0)
    model = Rebel()
    violations = 0
    for trial in range(12):
        lo_p = int(rng.integers(0, 100))
        s = (
            Settings(
                tokens=300,
                pitch_range=f"{lo_p}:{lo_p + int(rng.integers(0, 28))}" if trial % 3 else None,
                key=str(rng.choice(controls.KEY_CHOICES[1:])) if trial % 2 else None,
                velocity_range=f"{(v := int(rng.integers(1, 100)))}:{v + int(rng.integers(4, 28))}",
                max_polyphony=int(rng.integers(1, 6)),
            )
            if trial < 11
            else Settings(tokens=300, pitch_range="60:60", key="C", max_polyphony=1)
        )
        try:
            allowed = s.allowed_pitches()
        except UserError:  # a key with no pitch in that range
            continue
        prompt = np.array([VELOCITY_FIRST_ID + 31, ON + 30, ON + 90, ON + 91, SHIFT + 5])
        outs = sample(model, [prompt, prompt[:1]], max_new_tokens=300, seed=trial,
                      allowed_pitches=allowed, velocity_range=s.velocity_range,
                      max_polyphony=s.max_polyphony)  # fmt: skip
        for p, out in zip([prompt, prompt[:1]], outs, strict=True):
            assert len(out) == 300
            assert np.sum((out >= ON) & (out < ON + 128)) > 5  # it kept playing
            _check_every_token(p, out, None if allowed is None else set(allowed.tolist()),
                               s.velocity_range, s.max_polyphony)  # fmt: skip
        # Unconstrained, the same model breaks them.
        free = sample(model, [prompt], max_new_tokens=300, seed=trial)[0]
        try:
            _check_every_token(prompt, free, None if allowed is None else set(allowed.tolist()),
                               s.velocity_range, s.max_polyphony)  # fmt: skip
        except AssertionError:
            violations += 1
    assert violations >= 10


def test_no_controls_gives_the_ids_of_the_sampler_before_controls():
    """Golden ids of a tiny random model, recorded with the sampler before the controls existed
    (commit 8cf820d); permissive controls give the same ids too."""
    m = PerceiverAR(TINY, rngs=nnx.Rngs(0))
    m.logits.kernel[...] = 0.5 * jax.random.normal(jax.random.key(1), m.logits.kernel.shape)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 391, size=k) for k in (5, 30)]
    golden = [
        [11, 19, 349, 147, 250, 139, 235, 383, 48, 356, 176, 83, 3, 211, 131, 20, 49, 262, 115,
         349, 243, 177, 148, 262, 262, 262, 115, 117, 243, 245, 265, 383, 48, 309, 176, 309, 115,
         48, 262, 378, 111, 315, 176, 239, 243, 18, 146, 124],
        [160, 132, 238, 146, 137, 144, 199, 199, 165, 32, 139, 59, 187, 102, 265, 230, 27, 3, 82,
         265, 160, 389, 131, 271, 41, 94, 271, 210, 155, 39, 313, 222, 169, 167, 262, 83, 340,
         211, 12, 48, 48, 328, 176, 140, 176, 354, 12, 13],
    ]  # fmt: skip
    outs = sample(m, prompts, max_new_tokens=48, seed=7, max_note_seconds=0.3)
    assert [o.tolist() for o in outs] == golden
    permissive = sample(m, prompts, max_new_tokens=48, seed=7, max_note_seconds=0.3,
                        allowed_pitches=np.arange(128), velocity_range=(1, 127),
                        max_polyphony=10_000)  # fmt: skip
    assert [o.tolist() for o in permissive] == golden


# -- every surface -------------------------------------------------------------------------------

CONTROL_ARGS = ["--pitch-range", "C4:C5", "--key", "Am", "--velocity-range", "40:90",
                "--max-polyphony", "2"]  # fmt: skip


def _assert_notes_obey(midi_path, *, pitches, vel=(40, 90), poly=2):
    from perceiver_midi.tokenizer import encode

    notes = decode_notes(encode(midi_path))
    assert notes, "no notes"
    assert all(n.pitch in pitches for n in notes)
    assert all(vel[0] <= n.velocity <= vel[1] for n in notes)
    events = sorted([(n.start, 1) for n in notes] + [(n.end, -1) for n in notes],
                    key=lambda e: (e[0], e[1]))  # fmt: skip
    sounding = np.cumsum([d for _, d in events])
    assert sounding.max() <= poly


A_MINOR_C4_C5 = {p for p in range(60, 73) if p % 12 in (0, 2, 4, 5, 7, 9, 11)}


def test_cli_batch_and_api_honour_the_controls(tiny_model, tiny_checkpoint, short_prime, tmp_path,
                                               capsys):  # fmt: skip
    from perceiver_midi.app.cli import main
    from perceiver_midi.app.web.handlers import Composer

    out = tmp_path / "cli"
    rc = main(["continue", str(short_prime), "--checkpoint", str(tiny_checkpoint), "--out",
               str(out), "--seconds", "60", "--ignore-eos", "--audio", "none", "--seed", "3",
               *CONTROL_ARGS])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    _assert_notes_obey(out / "short_v1.mid", pitches=A_MINOR_C4_C5)

    # The same request and seed: the same MIDI bytes from the web API.
    composer = Composer(tiny_model, root=tmp_path / "web")
    _, midis, info = composer.api_continue(
        str(short_prime), seconds=60, seed=3, ignore_eos=True, pitch_range="C4:C5", key="Am",
        velocity_range="40:90", max_polyphony=2,
    )  # fmt: skip
    assert info["settings"]["pitch_range"] == "60:72" and info["settings"]["key"] == "A minor"
    assert info["settings"]["max_polyphony"] == 2
    assert info["settings"]["max_note_seconds"] == DEFAULT_MAX_NOTE_SECONDS
    cont = [m for m in midis if not m.endswith("_full.mid")]
    assert open(cont[0], "rb").read() == (out / "short_v1.mid").read_bytes()
    # ... and the same piece so far: the CLI's --full is the web app's _full.mid.
    full_out = tmp_path / "cli-full"
    rc = main(["continue", str(short_prime), "--checkpoint", str(tiny_checkpoint), "--out",
               str(full_out), "--seconds", "60", "--ignore-eos", "--audio", "none", "--seed",
               "3", "--full", *CONTROL_ARGS])  # fmt: skip
    assert rc == 0
    full = [m for m in midis if m.endswith("_full.mid")]
    assert open(full[0], "rb").read() == (full_out / "short_v1.mid").read_bytes()

    listing = tmp_path / "list.csv"
    listing.write_text(
        "prime,id,pitch_range,key,velocity_range,max_polyphony\n"
        f"{short_prime},ok,C4:C5,Am,40:90,2\n{short_prime},bad,90:30,,,\n{short_prime},k,,H,,\n"
    )
    bout = tmp_path / "batch"
    rc = main(["batch", str(listing), "--out", str(bout), "--checkpoint", str(tiny_checkpoint),
               "--seconds", "60", "--ignore-eos", "--audio", "none"])  # fmt: skip
    assert rc == 0
    manifest = [json.loads(x) for x in (bout / "manifest.jsonl").read_text().splitlines()]
    assert [r["id"] for r in manifest] == ["ok#v1"]
    assert manifest[0]["settings"]["key"] == "A minor"
    _assert_notes_obey(bout / manifest[0]["outputs"]["midi"], pitches=A_MINOR_C4_C5)
    failed = {f["id"]: f["reason"] for f in map(json.loads, (bout / "failed.jsonl").open())}
    assert "low (90) is above high (30)" in failed["bad"] and "expected a key" in failed["k"]


def test_polyphony_limit_defaults_to_the_pipeline_s_and_0_turns_it_off():
    import argparse

    from perceiver_midi.app.core.pipeline import DEFAULT_MAX_POLYPHONY
    from perceiver_midi.app.generate_cli import settings_from_args

    parser = argparse.ArgumentParser()
    from perceiver_midi.app.generate_cli import _add_sampling, _add_window

    _add_sampling(parser)
    _add_window(parser)
    assert settings_from_args(parser.parse_args([])).max_polyphony == DEFAULT_MAX_POLYPHONY
    assert settings_from_args(parser.parse_args(["--max-polyphony", "0"])).max_polyphony is None
    assert Settings().max_polyphony == DEFAULT_MAX_POLYPHONY == 12


def test_cli_bad_control_is_one_line_exit_2(tiny_checkpoint, short_prime, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "perceiver_midi.app.cli", "continue", str(short_prime),
         "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path), "--pitch-range", "90:30"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: pitch range 90:30: low (90) is above high (30)"
    assert not list(tmp_path.iterdir())
