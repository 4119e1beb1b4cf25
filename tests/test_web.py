"""The web app's handlers (app/web/handlers.py) with the tiny random model, the `app` command line,
and a load check: 20 concurrent gradio_client requests to `/continue` on a running app."""

import concurrent.futures
import io
import re
import statistics
import time

import numpy as np
import pretty_midi
import pytest
import soundfile

from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.pipeline import DEFAULT_MAX_NOTE_SECONDS, DEFAULT_MAX_POLYPHONY, Window
from perceiver_midi.app.web.handlers import (
    Composer,
    Done,
    GenerateRequest,
    Progress,
    ResultReady,
    Started,
)
from perceiver_midi.tokenizer import decode_notes, encode, music_seconds
from tests.served import serving

SECONDS = 3.0  # the token bucket of tests/test_pipeline.py: no extra compilation

pytestmark = pytest.mark.filterwarnings(  # from gradio's queue, not ours
    "ignore:.*no_silent_downcasting:Warning", "ignore:The copy keyword is deprecated:Warning"
)


@pytest.fixture(scope="module")
def composer(tiny_model, tmp_path_factory):
    c = Composer(tiny_model, root=tmp_path_factory.mktemp("web"))
    yield c
    c.close()


@pytest.fixture
def session(composer):
    s = composer.new_session()
    yield s
    s.close()


def _events(composer, session, **kw):
    kw.setdefault("seconds", SECONDS)
    kw.setdefault("seed", 3)
    return list(composer.generate(session, GenerateRequest(**kw)))


def _midi_file(path, notes):
    pm = pretty_midi.PrettyMIDI(resolution=500, initial_tempo=120)
    piano = pretty_midi.Instrument(program=0)
    for pitch, start, end in notes:
        piano.notes.append(pretty_midi.Note(80, pitch, start, end))
    pm.instruments.append(piano)
    pm.write(str(path))
    return path


# ----------------------------------------------------------------------------------------------
# Handlers
# ----------------------------------------------------------------------------------------------


def test_generate_gives_audio_piano_roll_and_midi(composer, session, short_prime):
    view = composer.load_upload(session, short_prime)
    assert not view.empty and view.can_undo and view.audio.is_file()
    assert view.roll.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert view.window == (0.0, pytest.approx(view.total))  # a 2 s piece: all of it

    events = _events(composer, session, variations=2)
    kinds = [type(e) for e in events]
    assert kinds[0] is Started and kinds[-1] is Done
    assert kinds.count(ResultReady) == 2 and set(kinds[1:-3]) <= {Progress}
    assert events[-1].first_audio_s is not None and "Done" in events[-1].status

    prime = encode(short_prime)
    for k, ev in enumerate(e for e in events if isinstance(e, ResultReady)):
        r = ev.result
        c = r.continuation
        assert ev.index == k and c.variation == k + 1 and c.seed == 3 + k
        assert c.stop in ("seconds", "eos") and c.tokens > 0
        # Audio: the last 3 s of the prime (all 2 s here), the continuation, a 1 s tail.
        audio, rate = soundfile.read(r.audio)
        assert rate == 48000 and audio.ndim == 2 and np.abs(audio).max() > 0
        assert 1.0 < len(audio) / rate <= r.lead_in + c.seconds + 1.0 + 0.05  # ends at a note
        assert r.audio_seconds == pytest.approx(len(audio) / rate)
        assert r.lead_in == pytest.approx(music_seconds(prime))
        assert r.roll.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        # MIDI: the continuation alone, and the piece so far (prime + continuation).
        alone = pretty_midi.PrettyMIDI(str(r.midi))
        assert alone.get_end_time() <= c.seconds + 1e-6
        full = decode_notes(encode(r.full_midi))
        assert [(n.pitch, n.start) for n in full[: len(decode_notes(prime))]] == [
            (n.pitch, n.start) for n in decode_notes(prime)
        ]
        assert len(full) == len(decode_notes(np.concatenate([prime, c.ids])))
        assert f"Variation {k + 1}" in r.header() and f"seed {3 + k}" in r.header()
    assert len(session.results) == 2


def test_same_seed_and_settings_give_the_cli_notes(
    composer, session, tiny_checkpoint, short_prime, tmp_path
):
    from perceiver_midi.app.cli import main

    out = tmp_path / "cli"
    rc = main(["continue", str(short_prime), "--checkpoint", str(tiny_checkpoint),
               "--out", str(out), "--seconds", str(SECONDS), "--variations", "2",
               "--seed", "3", "--audio", "none"])  # fmt: skip
    assert rc == 0
    composer.load_upload(session, short_prime)
    _events(composer, session, variations=2)
    for r in session.results:
        cli = out / f"short_v{r.continuation.variation}.mid"
        assert r.midi.read_bytes() == cli.read_bytes()


def test_continue_from_this_and_undo(composer, session, short_prime):
    composer.load_upload(session, short_prime)
    uploaded = session.prime
    _events(composer, session, variations=2)
    second = session.results[1]

    view = composer.continue_from(session, 1)
    piece = np.concatenate([uploaded.ids, second.continuation.ids])
    np.testing.assert_array_equal(session.prime.ids, piece)
    assert session.prime.continued == 1 and "continued 1x" in view.info
    assert view.total == pytest.approx(uploaded.seconds + second.continuation.seconds)
    # The "_full" download is exactly the new prime.
    assert decode_notes(encode(second.full_midi)) == decode_notes(piece)
    # The default window is the last 20 s of the new piece.
    assert view.window == (max(0.0, round(view.total - 20, 2)), view.total)

    # Continue again from the new piece, then undo twice: back to the upload, then to nothing.
    _events(composer, session, variations=1)
    composer.continue_from(session, 0)
    assert session.prime.continued == 2 and len(session.history) == 4
    composer.undo(session)
    np.testing.assert_array_equal(session.prime.ids, piece)
    view = composer.undo(session)
    assert session.prime is uploaded and "(upload)" in view.info and view.can_undo
    view = composer.undo(session)
    assert session.prime.empty and view.empty and not view.can_undo
    with pytest.raises(UserError, match="nothing to undo"):
        composer.undo(session)
    with pytest.raises(UserError, match="no result 3"):
        composer.continue_from(session, 2)


def test_start_from_nothing_and_examples(composer, session):
    view = composer.start_empty(session)
    assert view.empty and view.audio is None
    events = _events(composer, session, variations=1)
    assert "from nothing" in events[0].status
    r = session.results[0]
    assert r.lead_in == 0.0 and r.head.size == 0
    composer.continue_from(session, 0)
    np.testing.assert_array_equal(session.prime.ids, r.continuation.ids)

    view = composer.load_example(session, "bach_prelude_c.mid")
    assert "bach_prelude_c" in view.info and view.window[1] == pytest.approx(view.total)
    assert view.window[0] == pytest.approx(view.total - 20)
    with pytest.raises(UserError, match="no shipped example"):
        composer.load_example(session, "../README.md")


def test_random_seed_is_reported(composer, session, short_prime):
    composer.load_upload(session, short_prime)
    events = _events(composer, session, variations=2, random_seed=True, seed=0)
    seed = events[0].seed
    assert [r.continuation.seed for r in session.results] == [seed, seed + 1]
    assert f"seeds {seed}..{seed + 1}" in events[-1].status


def test_stop_keeps_what_was_generated(composer, session, short_prime):
    composer.load_upload(session, short_prime)
    events = []
    # 20 s (the page's default) takes several sampler chunks with the tiny model; Stop as soon
    # as sampling starts: the first chunk (64 tokens) is kept and rendered.
    for ev in composer.generate(session, GenerateRequest(seconds=20, variations=2, seed=1)):
        events.append(ev)
        if isinstance(ev, Started):
            composer.stop(session)
    assert isinstance(events[-1], Done) and events[-1].status.startswith("Stopped")
    for r in session.results:
        c = r.continuation
        assert c.stop == "stopped" and 0 < c.tokens <= 64 and c.seconds < 20
        assert r.audio.is_file() and r.midi.is_file()
    # The flag is cleared by the next request.
    _events(composer, session, variations=1)
    assert session.results[0].continuation.stop != "stopped"


def test_window_and_settings(composer, session, tmp_path):
    # Notes at 0-1 s and 5-6 s: 2..4 s is silence.
    path = _midi_file(tmp_path / "gap.mid", [(60, 0.0, 1.0), (64, 5.0, 6.0)])
    composer.load_upload(session, path)
    prime = session.prime
    plan = composer.plan(prime, GenerateRequest(window_start=0.5, window_end=5.5))
    assert plan.settings.window == Window.range(0.5, 5.5)
    assert music_seconds(plan.prime.head) == pytest.approx(5.5)
    plan = composer.plan(prime, GenerateRequest(window_start=4, window_end=prime.seconds))
    assert plan.settings.window == Window.range(4.0, None)  # to the end
    np.testing.assert_array_equal(plan.prime.head, prime.ids)
    plan = composer.plan(prime, GenerateRequest(prime_tokens=6, latents=8))
    assert plan.settings.window.max_tokens == 6 and plan.settings.latents == 8  # of the window
    assert plan.settings.window.kind == "range" and 0 < plan.prime.window.size <= 6
    assert composer.plan(prime, GenerateRequest(latents=16)).settings.latents is None
    assert composer.plan(prime, GenerateRequest()).settings.stop_at_eos
    assert (
        composer.plan(prime, GenerateRequest()).settings.max_note_seconds
        == DEFAULT_MAX_NOTE_SECONDS
    )
    assert (
        composer.plan(prime, GenerateRequest()).settings.max_polyphony == DEFAULT_MAX_POLYPHONY
    )  # default
    assert composer.plan(prime, GenerateRequest(max_polyphony=0)).settings.max_polyphony is None
    assert not composer.plan(prime, GenerateRequest(stop_at_eos=False)).settings.stop_at_eos
    for value, limit in ((None, None), (0, None), (2.5, 2.5)):  # None, 0: no limit
        plan = composer.plan(prime, GenerateRequest(max_note_seconds=value))
        assert plan.settings.max_note_seconds == limit

    bad = [
        (dict(window_start=7, window_end=8), "outside the piece"),
        (dict(window_start=-1, window_end=3), "outside the piece"),
        (dict(window_start=1, window_end=9), "after the end of the piece"),
        (dict(window_start=3, window_end=2), "must end after it starts"),
        (dict(window_start=2, window_end=4), "contains no notes"),
        (dict(variations=5), r"variations must be in \[1, 4\]"),
        (dict(variations=1e9), r"variations must be in \[1, 4\]"),
        (dict(seconds=0), "continuation length"),
        (dict(seconds=121), r"continuation length \(seconds\) must be in \(0, 120\]"),
        (dict(seconds=float("inf")), "must be a finite number"),
        (dict(top_p=0), "top-p"),
        (dict(top_k=float("nan")), "top-k must be a whole number"),
        (dict(latents=16), None),  # the model's own: fine
        (dict(latents=4), None),  # a quarter of it: one of the compiled choices
        (dict(latents=5), "latents must be one of 16, 8, 4"),
        (dict(latents=99999), "latents must be one of 16, 8, 4"),
        (dict(seed="x"), "seed must be a whole number"),
        (dict(max_note_seconds=-1), r"longest note \(seconds; 0 = no limit\) must be in \[0,"),
        (dict(max_note_seconds=1e9), r"longest note .* must be in \[0, 600\]"),
        (dict(max_note_seconds=float("inf")), "longest note .* must be a finite number"),
    ]
    for kw, message in bad:
        if message is None:
            composer.plan(prime, GenerateRequest(**kw))
            continue
        with pytest.raises(UserError, match=message):
            list(composer.generate(session, GenerateRequest(**kw)))
    assert session.prime is prime and session.results == []


def test_bad_uploads_give_a_message_and_the_app_keeps_serving(tiny_model, tmp_path, short_prime):
    composer = Composer(tiny_model, root=tmp_path / "root", max_upload_bytes=1024)
    session = composer.new_session()
    empty_midi = pretty_midi.PrettyMIDI()
    empty_midi.instruments.append(pretty_midi.Instrument(program=0))
    buf = io.BytesIO()
    empty_midi.write(buf)
    files = {
        "notes.txt": (b"these are not notes\n", "not a MIDI file"),
        "empty.mid": (b"", "the file is empty"),
        "silent.mid": (buf.getvalue(), "contains no notes"),
        "truncated.mid": (short_prime.read_bytes()[:40], "truncated MIDI file"),
        "big.mid": (b"MThd" + bytes(2000), "2 KiB is over the 1 KiB upload limit"),
    }
    for name, (data, message) in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UserError, match=message) as err:
            composer.load_upload(session, path)
        assert "\n" not in str(err.value) and name in str(err.value)
        assert len(session.history) == 1 and session.prime.empty  # nothing changed
        with pytest.raises(UserError, match=message):
            composer.api_continue(str(path), seconds=SECONDS)
    with pytest.raises(UserError, match="no file was uploaded"):
        composer.load_upload(session, None)
    # ...and the next request is served.
    composer.load_upload(session, short_prime)
    _events(composer, session, variations=1)
    assert session.results[0].audio.is_file()
    composer.close()


def test_api_continue(composer, short_prime):
    audio, midi, info = composer.api_continue(
        str(short_prime), seconds=SECONDS, variations=2, seed=3
    )
    assert len(audio) == 2 and len(midi) == 4
    assert [p.rsplit("/", 1)[1] for p in midi] == [
        "short_v1.mid", "short_v1_full.mid", "short_v2.mid", "short_v2_full.mid"
    ]  # fmt: skip
    assert [v["seed"] for v in info["variations"]] == [3, 4]
    assert info["window"] == {"kind": "last_seconds", "seconds": 20.0}
    for p in audio:
        assert soundfile.info(p).duration > 1.0
    _, _, info = composer.api_continue(str(short_prime), seconds=SECONDS, prime_range="0.5:1.5")
    assert info["window"] == {"kind": "range", "start": 0.5, "end": 1.5}
    _, midi, info = composer.api_continue(None, seconds=SECONDS)
    assert info["prime"] is None and len(midi) == 2
    _, _, info = composer.api_continue(str(short_prime), seconds=SECONDS, ignore_eos=True)
    assert info["variations"][0]["stop"] == "seconds"
    with pytest.raises(UserError, match="prime range must look like"):
        composer.api_continue(str(short_prime), prime_range="soon")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def test_app_command_options_and_one_line_errors(capsys):
    from perceiver_midi.app.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["app", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--host", "--port", "--share", "--checkpoint", "--max-concurrency"):
        assert opt in out
    assert main(["app", "--checkpoint", "/no/such/checkpoint"]) == 2
    err = capsys.readouterr().err
    assert err == "error: /no/such/checkpoint: no such checkpoint\n"
    assert main(["app", "--max-concurrency", "0", "--checkpoint", "x"]) == 2
    assert "--max-concurrency must be in 1..64" in capsys.readouterr().err
    assert main(["app", "--max-queue", "0", "--checkpoint", "x"]) == 2
    assert "--max-queue must be in 1..1000" in capsys.readouterr().err


def test_app_command_loads_warms_and_launches(tiny_checkpoint, monkeypatch, capsys):
    import gradio as gr

    from perceiver_midi.app.cli import main
    from perceiver_midi.app.web import page as web

    calls = {}

    def fake_launch(self, **kw):
        calls["launch"] = kw
        calls["concurrency"] = self._queue.default_concurrency_limit
        calls["endpoints"] = {fn.api_name for fn in self.fns.values()}
        return None, "http://fake", None

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    monkeypatch.setattr(web.Composer, "warm_up", lambda self, log=None, part="all": 0.0)
    rc = main(["app", "--checkpoint", str(tiny_checkpoint), "--host", "0.0.0.0",
               "--port", "7999", "--max-concurrency", "3", "--share"])  # fmt: skip
    assert rc == 0
    kw = calls["launch"]
    assert kw["server_name"] == "0.0.0.0" and kw["server_port"] == 7999 and kw["share"]
    assert calls["concurrency"] == 3
    assert {"continue", "generate"} <= calls["endpoints"]
    assert "warm for the default settings in" in capsys.readouterr().err


def test_warm_up_parts_split_the_shapes(tiny_model, tiny_infill, tmp_path, monkeypatch):
    """`perceiver-midi app` serves after part "default" (the shapes of requests at the default
    guidance and latents, 1-4 variations) and compiles part "rest" in the background: the two
    parts are disjoint and together are "all", for continuing and infilling."""
    from collections import Counter

    from perceiver_midi.app.core.pipeline import DEFAULT_GUIDANCE
    from perceiver_midi.app.web import handlers

    seen = []

    def fake_continue(model, prime, settings, **kw):
        seen.append(("continue", settings.variations, settings.latents, settings.guidance))

    def fake_infill(self, piece, gap, settings, **kw):
        seen.append(("infill", settings.variations, settings.latents, settings.guidance))

    monkeypatch.setattr(handlers, "continue_prime", fake_continue)
    monkeypatch.setattr(handlers.Composer, "_infill", fake_infill)
    monkeypatch.setattr(handlers.media, "warm_up", lambda folder: None)
    composer = Composer(tiny_model, infill_model=tiny_infill, root=tmp_path)
    shapes = {}
    for part in ("default", "rest", "all"):
        seen.clear()
        composer.warm_up(part=part)
        shapes[part] = list(seen)
    composer.close()
    assert Counter(shapes["default"] + shapes["rest"]) == Counter(shapes["all"])
    assert not set(shapes["default"]) & set(shapes["rest"])
    assert Counter(shapes["default"]) == Counter(
        (task, b, None, DEFAULT_GUIDANCE) for task in ("continue", "infill") for b in (1, 2, 4)
    )
    assert {g for *_, g in shapes["rest"]} == {0.0, DEFAULT_GUIDANCE}
    assert len(shapes["all"]) == 2 * 3 * 2 * 3  # tasks x variations x guided or not x latents
    with pytest.raises(ValueError, match="part"):
        composer.warm_up(part="some")


# ----------------------------------------------------------------------------------------------
# A running app: /continue through gradio_client, 20 at once
# ----------------------------------------------------------------------------------------------


@pytest.fixture()
def served(served_app):
    """The session's served app (tests/conftest.py), every shape compiled."""
    served_app.composer.warm_up()  # compiles again only what the suite's cache drops let go
    return served_app.url


def test_the_queue_is_bounded(tiny_model, short_prime, tmp_path):
    """Past --max-queue waiting requests, a request is refused at once; the others are served."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import QueueError

    def one(i: int) -> str:
        client = Client(url, verbose=False, download_files=str(tmp_path / str(i)))
        try:
            client.predict(handle_file(str(short_prime)), seconds=60.0, seed=i,
                           variations=4, api_name="/continue")  # fmt: skip
        except QueueError:
            return "refused"
        return "served"

    with serving(tiny_model, tmp_path / "root", max_concurrency=1, max_queue=2) as (url, _):
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            outcomes = list(pool.map(one, range(10)))
    assert "refused" in outcomes and "served" in outcomes, outcomes


def test_continue_endpoint_answers_gradio_client(served, short_prime, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(served, verbose=False, download_files=str(tmp_path))
    audio, midi, info = client.predict(
        handle_file(str(short_prime)), seconds=SECONDS, variations=2, seed=3,
        max_note_seconds=1.5, api_name="/continue",
    )  # fmt: skip
    assert len(audio) == 2 and len(midi) == 4 and info["variations"][1]["seed"] == 4
    assert soundfile.info(audio[0]).duration > 1.0
    assert open(midi[0], "rb").read(4) == b"MThd"
    assert pretty_midi.PrettyMIDI(midi[1]).instruments  # _full: the prime is in it
    # A bad upload: the message comes back, and the next request is served.
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"not midi at all")
    with pytest.raises(Exception, match="bad.mid: not a MIDI file"):
        client.predict(handle_file(str(bad)), seconds=SECONDS, api_name="/continue")
    with pytest.raises(Exception, match="latents must be one of 16, 8, 4"):
        client.predict(None, seconds=SECONDS, latents=5, api_name="/continue")
    with pytest.raises(Exception, match="longest note"):
        client.predict(None, seconds=SECONDS, max_note_seconds=-1, api_name="/continue")
    audio, _, _ = client.predict(None, seconds=SECONDS, api_name="/continue")
    assert len(audio) == 1


def test_twenty_concurrent_requests_same_files_as_one_by_one_and_no_compilation(
    served, short_prime, tmp_path
):
    """Every shape a request can ask for (1-4 variations, each latents choice, guided or not, any
    length up to the maximum) was compiled at start: serving compiles nothing, and requests
    served 20 at once give byte for byte the files of the same requests run one by one."""
    import jax
    from gradio_client import Client, handle_file

    requests = [
        dict(seed=i, variations=1 + i % 4, latents=(0, 8, 4)[i % 3],
             seconds=(SECONDS, 120.0)[i == 7], temperature=(1.0, 0.7)[i % 2],
             guidance=(0.0, 0.7, 1.5)[i % 5 % 3])
        for i in range(20)
    ]  # fmt: skip

    def one(i: int, where: str) -> tuple[float, list[bytes]]:
        client = Client(served, verbose=False, download_files=str(tmp_path / where / str(i)))
        t0 = time.perf_counter()
        audio, midi, info = client.predict(
            handle_file(str(short_prime)), **requests[i], api_name="/continue"
        )
        n = requests[i]["variations"]
        assert len(audio) == n and len(midi) == 2 * n and info["variations"][0]["seed"] == i
        return time.perf_counter() - t0, [open(m, "rb").read() for m in midi]

    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(one, i, "together") for i in range(20)]
            together = [f.result() for f in futures]  # re-raises any error
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == [], f"{len(compiles)} XLA compilations while serving"
    alone = [one(i, "alone") for i in range(20)]
    for i in range(20):
        assert together[i][1] == alone[i][1], f"request {i}: other files when served together"
    latencies = sorted(t for t, _ in together)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(f"20 concurrent /continue: p50 {statistics.median(latencies):.2f} s, p95 {p95:.2f} s")


def test_one_request_at_a_time_per_session(composer, session, short_prime):
    """A second request of a session waits for the first (here: refuses after its timeout)."""
    import threading

    composer.load_upload(session, str(short_prime))
    gen = composer.generate(session, GenerateRequest(seconds=SECONDS, seed=1))
    assert isinstance(next(gen), Started)  # the generation holds the session now
    with pytest.raises(UserError, match="still busy"):
        with session.busy(timeout=0.05):
            pass
    order = []
    undo = threading.Thread(target=lambda: order.append(composer.undo(session)))
    undo.start()
    undo.join(0.3)
    assert undo.is_alive() and not order  # waiting, not interleaving
    composer.stop(session)  # Stop does not need the session: it ends the generation
    events = list(gen)
    assert isinstance(events[-1], Done)
    undo.join(30)
    assert len(order) == 1 and order[0].empty  # undo ran after the generation
    assert session.results and session.results[0].base.name == "short"


# ----------------------------------------------------------------------------------------------
# Regenerate a span (infilling): handlers, the app command's infilling model, /infill
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piece8(tmp_path_factory):
    """8 s: a note every 0.5 s, 0.8 s long (notes sound across any edge)."""
    notes = [(60 + (k * 7) % 12, 0.5 * k, 0.5 * k + 0.8) for k in range(16)]
    return _midi_file(tmp_path_factory.mktemp("pieces") / "eight.mid", notes)


@pytest.fixture(scope="module")
def infill_composer(tiny_model, tiny_infill, tmp_path_factory):
    c = Composer(tiny_model, infill_model=tiny_infill, root=tmp_path_factory.mktemp("web-infill"))
    yield c
    c.close()


def _key(n):
    return (n.pitch, round(n.start, 3), round(n.end, 3), n.velocity)


def test_regenerate_a_span_keep_and_undo(infill_composer, tiny_infill, piece8):
    from perceiver_midi.app.core.infill import Gap, infill_piece
    from perceiver_midi.app.core.pipeline import Settings
    from perceiver_midi.tokenizer import midi_bytes

    composer = infill_composer
    s = composer.new_session()
    composer.load_upload(s, piece8)
    uploaded = s.prime
    done = composer.regenerate_span(s, GenerateRequest(variations=2, seed=5), 2.35, 5.0)
    assert done.seed == 5 and "2.50..5.00 s regenerated (asked 2.35:5)" in done.status
    # The page's files are those of `perceiver-midi infill` (app.core.infill) with the same seed.
    expected = infill_piece(
        tiny_infill, str(piece8), Gap(2.35, 5.0), Settings(variations=2, seed=5)
    )
    assert [r.infilled.seed for r in done.results] == [5, 6]
    for r, f in zip(done.results, expected, strict=True):
        assert r.midi.name == f"eight_infill_v{f.variation}.mid"
        assert r.midi.read_bytes() == midi_bytes(f.midi())
        assert r.middle_midi.read_bytes() == midi_bytes(f.middle_midi())
        assert f"seed {f.seed}, 2.50..5.00 s regenerated" in r.header()
        # Heard in place: 2.5 s before the span (the piece's start), the span, 3 s after.
        audio, rate = soundfile.read(r.audio)
        assert rate == 48000 and np.abs(audio).max() > 0
        assert 5.0 <= len(audio) / rate <= 2.5 + 2.5 + 3.0 + 1.0 + 0.05
        assert r.roll.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    view = composer.keep_span(s, 1)
    kept, f = done.results[1], done.results[1].infilled
    assert decode_notes(s.prime.ids) == decode_notes(encode(kept.midi))  # the download, exactly
    assert "2.50..5.00 s regenerated" in view.info and view.can_undo and len(s.history) == 3
    assert view.span == (2.35, 5.0)  # the span stays where it was regenerated
    original, now = decode_notes(uploaded.ids), {_key(n) for n in decode_notes(s.prime.ids)}
    outside = {_key(n) for n in original if n.end <= f.start or n.start >= f.end}
    assert outside and outside <= now  # the piece outside the span, note for note
    inside = [n for n in decode_notes(s.prime.ids) if f.start <= n.start < f.end]
    assert all(n.end <= f.end + 1e-6 for n in inside)
    view = composer.undo(s)
    assert s.prime is uploaded and "(upload)" in view.info
    with pytest.raises(UserError, match="no regenerated variation 3 to keep"):
        composer.keep_span(s, 2)
    s.close()


def test_bad_spans_and_no_infilling_model_are_one_line(infill_composer, tiny_model, piece8):
    from perceiver_midi.app.web.handlers import NO_INFILL_MODEL

    composer = infill_composer
    s = composer.new_session()
    with pytest.raises(UserError, match="no piece to regenerate a span of"):
        composer.regenerate_span(s, GenerateRequest(), 1, 2)
    composer.load_upload(s, piece8)
    bad = [
        ((9, 10), "infill range starts at 9 s, at or after the piece's end"),
        ((4, 2), r"infill range end \(2 s\) must be after its start"),
        ((0, 20), "at most 12 s can be regenerated at once"),
        ((None, 2), "infill range start must be a number"),
        ((1, 2, dict(variations=5)), r"variations must be in \[1, 4\]"),
        ((1, 2, dict(latents=5)), "latents must be one of 16, 8, 4"),
    ]
    for args, message in bad:
        req = GenerateRequest(**(args[2] if len(args) > 2 else {}))
        with pytest.raises(UserError, match=message) as err:
            composer.regenerate_span(s, req, *args[:2])
        assert "\n" not in str(err.value)
        with pytest.raises(UserError, match=message):
            composer.api_infill(str(piece8), start=args[0], end=args[1], **(args[2:] or [{}])[0])
    assert s.spans == [] and len(s.history) == 2  # nothing changed
    s.close()

    plain = Composer(tiny_model, root=composer.root / "plain")  # cannot infill: no second model
    assert plain.infill_model is None
    with pytest.raises(UserError, match=re.escape(NO_INFILL_MODEL)):
        plain.regenerate_span(plain.new_session(), GenerateRequest(), 1, 2)
    with pytest.raises(UserError, match=re.escape(NO_INFILL_MODEL)):
        plain.api_infill(str(piece8), start=1, end=2)
    with pytest.raises(UserError, match="not trained to infill"):
        Composer(tiny_model, infill_model=tiny_model)


def test_the_span_is_shaded_on_the_piece_roll(infill_composer, piece8, short_prime):
    composer = infill_composer
    empty = composer.new_session()
    roll, line = composer.show_span(empty, (1, 2), (0, 1))
    assert roll is None and line == "Load a piece first (upload, pick or play one)."
    empty.close()
    s = composer.new_session()
    view = composer.load_upload(s, piece8)
    assert view.span == (2.15, 6.15) and s.span is None  # offered by the sliders, not shown
    plain = view.roll.read_bytes()
    roll, line = composer.show_span(s, (2.0, 6.0), (0, 8.3))
    assert line == "Span 2.00..6.00 s: 4.00 s (at most 12 s) of the 8.30 s piece."
    assert s.span == (2.0, 6.0) and roll.read_bytes() != plain
    _, line = composer.show_span(s, (6.0, 2.0), (0, 8.3))  # said, not raised
    assert line == r"**Span:** infill range end (2 s) must be after its start (6 s)."
    _, line = composer.show_span(s, (0.0, 13.0), (0, 8.3))
    assert "at most 12 s can be regenerated at once" in line
    composer.show_span(s, (5.0, 8.0), (0, 8.3))
    assert composer.set_window(s, 0, 8.3).span == (5.0, 8.0)  # window changes keep it shaded
    view = composer.load_upload(s, short_prime)  # a 2 s piece cannot hold it: its middle
    assert view.span == s.span == (0.0, round(view.total, 2))
    roll, line = composer.show_span(s, None, (0, 1))  # the mode closed: nothing shaded
    assert s.span is None and line == "" and roll.is_file()
    s.close()


def test_app_command_chooses_the_infilling_model(
    tiny_checkpoint, tiny_infill_checkpoint, monkeypatch, capsys, tmp_path
):
    import gradio as gr

    from perceiver_midi.app.cli import main
    from perceiver_midi.app.web import page as web

    seen = {}

    def fake_launch(self, **kw):
        seen["composer"] = self.composer
        seen["blocks"] = {getattr(b, "elem_id", None): b for b in self.blocks.values()}
        seen["endpoints"] = {fn.api_name for fn in self.fns.values()}
        return None, "http://fake", None

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    monkeypatch.setattr(web.Composer, "warm_up", lambda self, log=None, part="all": 0.0)
    monkeypatch.setenv("PERCEIVER_MIDI_INFILL_CHECKPOINT", str(tmp_path / "not-shipped"))
    main_ckpt, infill_ckpt = str(tiny_checkpoint), str(tiny_infill_checkpoint)

    # No infilling model anywhere: the mode says so, its button is off, the rest is there.
    assert main(["app", "--checkpoint", main_ckpt]) == 0
    assert seen["composer"].infill_model is None
    assert "infilling ('Regenerate a span'): off" in capsys.readouterr().err
    blocks = seen["blocks"]
    assert "no infilling model is loaded" in blocks["span-note"].value
    assert blocks["regenerate"].interactive is False and blocks["generate"].interactive is not False
    assert {"continue", "infill"} <= seen["endpoints"]

    # A second model; the shipped one by default; the main model when it can infill.
    assert main(["app", "--checkpoint", main_ckpt, "--infill-checkpoint", infill_ckpt]) == 0
    composer = seen["composer"]
    assert composer.infill_model.config.infill and not composer.model.config.infill
    assert seen["blocks"]["regenerate"].interactive is not False
    monkeypatch.setenv("PERCEIVER_MIDI_INFILL_CHECKPOINT", infill_ckpt)
    assert main(["app", "--checkpoint", main_ckpt]) == 0
    assert seen["composer"].infill_model.config.infill
    assert main(["app", "--checkpoint", main_ckpt, "--infill-checkpoint", "none"]) == 0
    assert seen["composer"].infill_model is None
    assert main(["app", "--checkpoint", infill_ckpt]) == 0
    assert seen["composer"].infill_model is seen["composer"].model
    assert "infilling ('Regenerate a span'): the main model" in capsys.readouterr().err

    # Asked for and unusable: one line, exit status 2.
    assert main(["app", "--checkpoint", main_ckpt, "--infill-checkpoint", main_ckpt]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"error: {main_ckpt}: this checkpoint was not trained to infill (--infill-checkpoint)\n"
    )
    assert main(["app", "--checkpoint", main_ckpt, "--infill-checkpoint", "/no/such"]) == 2
    assert capsys.readouterr().err == "error: /no/such: no such checkpoint\n"


def test_infill_endpoint_gives_the_files_of_app_infill_and_compiles_nothing(
    served, tiny_infill, piece8, tmp_path
):
    """/infill through gradio_client: the whole piece and the span alone per variation, byte for
    byte what app.core.infill.infill_piece gives for the same request and seed; every shape was
    compiled at start; a bad range is its one-line message."""
    import jax
    from gradio_client import Client, handle_file

    from perceiver_midi.app.core.infill import Gap, infill_piece
    from perceiver_midi.app.core.pipeline import Settings
    from perceiver_midi.tokenizer import midi_bytes

    client = Client(served, verbose=False, download_files=str(tmp_path))
    compiles = []

    def listen(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        audio, midi, info = client.predict(
            handle_file(str(piece8)), start=2.35, end=5.0, variations=3, seed=7,
            pitch_range="60:72", api_name="/infill",
        )  # fmt: skip
        _, quarter, _ = client.predict(handle_file(str(piece8)), start=6, end=7.9, latents=4,
                                       temperature=0.8, guidance=0, api_name="/infill")  # fmt: skip
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert compiles == [], f"{len(compiles)} XLA compilations while serving /infill"

    names = [p.rsplit("/", 1)[1] for p in midi]
    assert names == [f"eight_infill_v{v}{part}.mid" for v in (1, 2, 3) for part in ("", "_middle")]
    expected = infill_piece(tiny_infill, str(piece8), Gap(2.35, 5.0),
                            Settings(variations=3, seed=7, pitch_range="60:72"))  # fmt: skip
    for k, f in enumerate(expected):
        assert open(midi[2 * k], "rb").read() == midi_bytes(f.midi())
        assert open(midi[2 * k + 1], "rb").read() == midi_bytes(f.middle_midi())
        assert info["variations"][k] == {
            "variation": k + 1, "seed": 7 + k, "start": 2.5, "end": 5.0, "tokens": f.tokens,
            "stop": f.stop, "audio_lead_in_seconds": 2.5,
        }  # fmt: skip
        assert soundfile.info(audio[k]).duration >= 5.0
    assert (
        info["range"] == {"start": 2.35, "end": 5.0} and info["settings"]["pitch_range"] == "60:72"
    )
    quarter_settings = Settings(latents=4, temperature=0.8, guidance=0)
    (f,) = infill_piece(tiny_infill, str(piece8), Gap(6, 7.9), quarter_settings)
    assert open(quarter[0], "rb").read() == midi_bytes(f.midi())

    for start, end, message in [(9, 10, "after the piece's end"), (0, 20, "at most 12 s")]:
        with pytest.raises(Exception, match=message) as err:
            client.predict(handle_file(str(piece8)), start=start, end=end, api_name="/infill")
        assert "Traceback" not in str(err.value)


def test_infill_endpoint_without_an_infilling_model_says_so(tiny_model, piece8, tmp_path):
    from gradio_client import Client, handle_file

    with serving(tiny_model, tmp_path / "root") as (url, _):  # no infilling model, none compiled
        client = Client(url, verbose=False, download_files=False)
        with pytest.raises(Exception, match="no infilling model is loaded"):
            client.predict(handle_file(str(piece8)), start=1, end=2, api_name="/infill")
