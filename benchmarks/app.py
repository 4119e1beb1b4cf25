"""Web app benchmark: a real server (``python -m perceiver_midi.app``), driven by gradio_client.

    python benchmarks/app.py                         # the shipped checkpoint, else a random one
    python benchmarks/app.py --checkpoint DIR        # any checkpoint

What is measured (results in ``benchmarks/results/app.json``, written atomically):
  * startup: from starting ``python -m perceiver_midi.app`` to the page answering (model load +
    the sampler compiled for the default continuation length at 1, 2 and 4 variations).
  * click to first audio: what the page does when Generate is pressed (the ``/generate`` event,
    the prime ``examples/bach_prelude_c.mid`` set first, its last 20 s as the window, a 20 s
    continuation with "stop at EOS" off so that every continuation is exactly 20 s of music):
    from submitting the event to receiving the first update that carries a result's audio.
    Measured for 1 and 2 variations (the page's default is 2), ``--repeats`` times each, fresh
    seeds; the median is reported, with the server's own figure (its "first audio after" status
    line) and the tokens of each continuation.
  * the same at MAESTRO's density, in process: a model still in training (or a random one)
    may need fewer tokens for 20 s than a trained one, so the Generate handler's work for one
    variation (sampling with the page's progress callback, then audio, piano roll, MIDI) is
    also timed with a budget of ``--dense-tokens`` (800 = 20 s at ~40 tokens/s) tokens.
  * load: ``--requests`` (20) gradio_client requests to ``/continue`` (same prime, a 20 s
    continuation, 1 variation, ignore_eos, seeds 0..19), all submitted at once from as many
    threads, each with its own client; latency from submit to the result (files downloaded),
    p50/p95/max, errors (must be 0), throughput. The server runs with ``--max-concurrency``
    (default 2) and a ``--max-queue`` that holds all the requests (a fuller queue refuses them by
    design, "Queue is full").

  * call and response (``benchmarks/results/app_answer.json``; ``--answer-only`` measures just
    this): in headless Chromium (Debian's, as the browser tests), a fake Web MIDI keyboard
    (``tests/fake_midi.py``) plays the first ``--phrase-seconds`` (8) of the Bach example into
    the Play panel with call and response on, ``--answer-seconds`` (10) answers, "stop at EOS"
    off, the pause 1.5 s; ``--answers`` (5) phrases in a row (the piece grows by each). Measured
    in the page: from the end of the pause (the panel sends the phrase) to the answer's audio
    element firing ``playing``; median against the 2 s target.

The result names the checkpoint the figures are for, read from its ``config.json``: folder
name, path, training step, validation NLL and number of latents (``"checkpoint"``).

With no shipped checkpoint (and no ``--checkpoint``) a random ``cpu``-preset model is used and
the result says so: its speed per token is that of a trained one, but a random model takes far
fewer tokens to fill 20 s of music than a trained one (about 40 tokens/s on MAESTRO), so the
tokens per continuation are recorded next to the times.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import re
import statistics
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.web_server import Server  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "app.json"
ANSWER_RESULTS = ROOT / "benchmarks" / "results" / "app_answer.json"
CHROMIUM = pathlib.Path(os.environ.get("PERCEIVER_MIDI_CHROMIUM", "/usr/bin/chromium"))
TARGET_ANSWER_S = 2.0  # call and response: end of the pause -> first sound of a 10 s answer
EXAMPLE = ROOT / "examples" / "bach_prelude_c.mid"
TARGET_FIRST_AUDIO_S = 5.0


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _checkpoint(arg: str | None, tmp: pathlib.Path) -> tuple[str, str, dict]:
    from perceiver_midi.model.checkpoint import default_checkpoint, read_info

    if arg:
        return arg, "given", read_info(arg).get("metadata", {})
    shipped = default_checkpoint()
    if shipped is not None:
        return str(shipped), "shipped", read_info(shipped).get("metadata", {})
    from flax import nnx

    from perceiver_midi.model.checkpoint import save_model
    from perceiver_midi.model.config import get_config
    from perceiver_midi.model.perceiver_ar import PerceiverAR

    path = tmp / "random-cpu"
    save_model(PerceiverAR(get_config("cpu"), rngs=nnx.Rngs(0)), path, metadata={"random": True})
    return str(path), "random cpu preset (no shipped checkpoint yet)", {}


def _is_audio(value) -> bool:
    if isinstance(value, dict):
        value = value.get("path") or value.get("url") or ""
    return isinstance(value, str) and value.endswith(".wav")


def click_to_first_audio(
    url: str, seconds: float, variations: int, seed: int, latents: int
) -> dict:
    """One Generate press through the page's own event; seconds until the first audio."""
    from gradio_client import Client, handle_file

    from perceiver_midi.app.core.controls import ANY_KEY
    from perceiver_midi.app.web.handlers import GenerateRequest
    from perceiver_midi.app.web.page import SAMPLING_WIDGETS

    client = Client(url, verbose=False, download_files=False)
    view = client.predict(handle_file(str(EXAMPLE)), api_name="/set_prime")
    start, end = view[3]["value"], view[4]["value"]  # the window sliders (last 20 s)
    t0 = time.perf_counter()
    # The page's inputs (app/web/page.py's ``controls``), at the page's defaults (GenerateRequest:
    # the widgets' initial values; the controls' text boxes empty): length, variations, prime
    # tokens, stop at EOS (off: always 20 s), window start, window end, then the sampling widgets
    # in SAMPLING_WIDGETS order.
    defaults = GenerateRequest(seed=seed, latents=latents)
    page = {name: getattr(defaults, name) for name in SAMPLING_WIDGETS}
    page.update(pitch_range="", key=ANY_KEY, velocity_range="")
    sampling = [page[name] for name in SAMPLING_WIDGETS]
    job = client.submit(seconds, variations, 0, False, start, end, *sampling, api_name="/generate")
    first = None
    status = ""
    for out in job:
        if first is None and any(_is_audio(v) for v in out):
            first = time.perf_counter() - t0
        if isinstance(out[0], str) and out[0]:
            status = out[0]
    total = time.perf_counter() - t0
    if first is None:  # a press that produced no audio is a broken benchmark, not a timing
        raise RuntimeError(f"/generate gave no audio in {total:.2f} s; status {status!r}")
    m = re.search(r"first audio after ([0-9.]+) s", status)
    each = re.findall(r"([0-9.]+) s, ([0-9]+) tokens", status)
    return {
        "music_seconds": [float(a) for a, _ in each],
        "tokens": [int(b) for _, b in each],
        "first_audio_s": first,
        "all_results_s": total,
        "server_first_audio_s": float(m.group(1)) if m else None,
        "status": status,
    }


def load_check(url: str, requests: int, seconds: float, out: pathlib.Path) -> dict:
    from gradio_client import Client, handle_file

    barrier = threading.Barrier(requests)

    def one(i: int) -> dict:
        client = Client(url, verbose=False, download_files=str(out / f"r{i}"))
        barrier.wait()
        t0 = time.perf_counter()
        try:
            audio, midi, info = client.predict(
                handle_file(str(EXAMPLE)), seconds=seconds, seed=i, ignore_eos=True,
                api_name="/continue",
            )  # fmt: skip
            ok = len(audio) == 1 and len(midi) == 2 and os.path.getsize(audio[0]) > 0
            tokens = info["variations"][0]["tokens"]
            return {"ok": ok, "latency_s": time.perf_counter() - t0, "tokens": tokens}
        except Exception as exc:  # counted as an error
            return {"ok": False, "latency_s": time.perf_counter() - t0, "error": repr(exc)}

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(requests) as pool:
        rows = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    lat = [r["latency_s"] for r in rows if r["ok"]]
    tokens = [r["tokens"] for r in rows if r.get("tokens") is not None]
    return {
        "requests": requests,
        "concurrent_clients": requests,
        "seconds": seconds,
        "variations": 1,
        "errors": sum(not r["ok"] for r in rows),
        "error_messages": sorted({r["error"] for r in rows if "error" in r})[:5],
        "p50_s": statistics.median(lat) if lat else None,
        "p95_s": _percentile(lat, 0.95) if lat else None,
        "max_s": max(lat) if lat else None,
        "wall_s": wall,
        "requests_per_s": requests / wall,
        "mean_tokens_per_continuation": statistics.mean(tokens) if tokens else None,
    }


def dense_first_audio(ckpt: str, tokens: int, repeats: int, tmp: pathlib.Path) -> dict:
    """The Generate handler's work for one variation (sampling in the page's chunked callback
    mode, then rendering audio, piano roll and MIDI), in process, with a fixed token budget: how
    long the first audio takes at MAESTRO's density (about 40 tokens per second of music)."""
    import dataclasses

    from perceiver_midi.app.core.pipeline import continue_prime
    from perceiver_midi.app.web.handlers import Composer, GenerateRequest
    from perceiver_midi.app.web.session import read_upload
    from perceiver_midi.model.checkpoint import load_model

    model = load_model(ckpt)
    composer = Composer(model, root=tmp / "dense")
    prime = read_upload(EXAMPLE)
    plan = composer.plan(prime, GenerateRequest(variations=1))
    settings = plan.settings.replace(seconds=None, tokens=tokens, stop_at_eos=False)
    plan = dataclasses.replace(plan, settings=settings)
    continue_prime(model, plan.prime, settings, callback=lambda info: True)  # compile
    runs = []
    for k in range(repeats):
        t0 = time.perf_counter()
        conts = continue_prime(
            model, plan.prime, settings.replace(seed=2000 + k), callback=lambda info: False
        )
        sampled = time.perf_counter() - t0
        composer._render(conts[0], plan, tmp / "dense" / f"run{k}")
        runs.append(
            {
                "first_audio_s": time.perf_counter() - t0,
                "sample_s": sampled,
                "tokens": conts[0].tokens,
                "music_seconds": conts[0].seconds,
            }
        )
    composer.close()
    return {
        "tokens": tokens,
        "median_s": statistics.median(r["first_audio_s"] for r in runs),
        "runs": runs,
    }


def call_and_response(
    url: str, answers: int, answer_seconds: float, phrase_seconds: float, pause: float
) -> dict:
    """The Play panel's call and response in a real browser; latencies measured by the page."""
    from playwright.sync_api import sync_playwright

    from perceiver_midi.tokenizer import decode_notes, encode
    from tests.fake_midi import FAKE_MIDI_JS, messages_from_notes

    notes = [n for n in decode_notes(encode(EXAMPLE)) if n.end <= phrase_seconds]
    phrase = messages_from_notes(notes)
    statuses = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--autoplay-policy=no-user-gesture-required"],
        )  # fmt: skip
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(300_000)
            page.add_init_script(FAKE_MIDI_JS)
            page.goto(url, wait_until="load")
            page.wait_for_selector("#play-keys .pm-key")
            box = page.locator("#length input[type=number]").first
            box.fill(f"{answer_seconds:g}")
            box.press("Enter")
            page.get_by_text("Advanced").first.click()
            page.get_by_label("Stop at the end of a piece (EOS)").uncheck()
            page.fill("#play-pause", f"{pause:g}")
            page.check("#play-cr")
            for k in range(answers):
                page.evaluate("() => window.fakeMidi.restart()")
                page.evaluate("(m) => window.fakeMidi.play(m)", phrase)
                page.wait_for_function(f"() => window.perceiverMidiPlay.answers >= {k + 1}")
                statuses.append(page.inner_text("#answer-status"))
            latencies = [ms / 1000 for ms in page.evaluate("window.perceiverMidiPlay.latencies")]
        finally:
            browser.close()
    for k, (lat, status) in enumerate(zip(latencies, statuses, strict=False)):
        print(f"  answer {k + 1}: first sound {lat:.2f} s after the pause; {status}", flush=True)
    med = statistics.median(latencies) if latencies else None
    return {
        "what": "end of the pause -> the answer's audio playing, measured in the page",
        "phrase": f"examples/bach_prelude_c.mid, first {phrase_seconds:g} s "
        f"({len(notes)} notes), from a fake Web MIDI keyboard",
        "answer_seconds": answer_seconds,
        "pause_s": pause,
        "latencies_s": latencies,
        "answer_status": statuses,
        "median_s": med,
        "target_s": TARGET_ANSWER_S,
        "meets_target": med is not None and len(latencies) == answers and med <= TARGET_ANSWER_S,
    }


def main(argv: list[str] | None = None) -> int:
    from benchmarks.env import add_note_flag, add_out_flag, environment, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="default: the shipped one, else a random cpu preset")
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--max-concurrency", type=int, default=2)
    p.add_argument(
        "--max-queue",
        type=int,
        help="the server's --max-queue (default: enough for --requests, at least the app's 16)",
    )
    p.add_argument("--seconds", type=float, default=20.0, help="continuation length (20)")
    p.add_argument("--repeats", type=int, default=3, help="Generate presses per setting (3)")
    add_out_flag(p, RESULTS)
    add_note_flag(p)
    p.add_argument(
        "--dense-tokens",
        type=int,
        default=800,
        help="token budget of the in-process first-audio check (800: 20 s at MAESTRO's density)",
    )
    p.add_argument("--answers", type=int, default=5, help="call and response: phrases (5)")
    p.add_argument("--answer-seconds", type=float, default=10.0, help="answer length (10)")
    p.add_argument("--phrase-seconds", type=float, default=8.0, help="phrase length (8)")
    p.add_argument(
        "--answer-only",
        action="store_true",
        help="measure call and response only (writes app_answer.json alone)",
    )
    args = p.parse_args(argv)

    env = environment()
    load_before = os.getloadavg()[0]
    for pkg in ("gradio", "gradio_client", "midirenderer", "matplotlib"):
        try:
            from importlib import metadata

            env["versions"][pkg] = metadata.version(pkg)
        except Exception:
            pass
    with tempfile.TemporaryDirectory(prefix="bench-app-") as tmp_name:
        tmp = pathlib.Path(tmp_name)
        ckpt, kind, meta = _checkpoint(args.checkpoint, tmp)
        from perceiver_midi.model.checkpoint import read_info

        info = read_info(ckpt)
        latents = int(info["config"]["num_latents"])  # the Latents slider's default
        # Which model the figures are for, read from its config.json (never hard-coded).
        checkpoint = {
            "name": pathlib.Path(ckpt).resolve().name,
            "path": ckpt,
            "kind": kind,
            "step": meta.get("step"),
            "val_nll": meta.get("val_nll"),
            "num_latents": latents,
            "max_len": int(info["config"]["max_len"]),
            "metadata": meta,
        }
        print(f"checkpoint: {ckpt} ({kind}, step {checkpoint['step']}, {latents} latents)",
              flush=True)  # fmt: skip
        max_queue = args.max_queue or max(16, args.requests)  # the load check: none refused
        server = Server(ckpt, infill_checkpoint=None, max_concurrency=args.max_concurrency,
                        max_queue=max_queue, log=tmp / "server.log")  # fmt: skip
        from perceiver_midi.app.web.page import ALL_SHAPES_COMPILED

        try:
            startup = server.wait_ready(all_shapes=False)
            print(f"serving after {startup:.1f} s (load + the default settings' shapes)",
                  flush=True)  # fmt: skip
            # The other shapes compile in the background; measure once they are done (the
            # first minutes, while they compile, are slower on 2 cores).
            all_shapes = server.wait_log(ALL_SHAPES_COMPILED)
            print(f"every shape compiled after {all_shapes:.1f} s", flush=True)
            answer = call_and_response(server.url, args.answers, args.answer_seconds,
                                       args.phrase_seconds, 1.5)  # fmt: skip
            write_json(
                ANSWER_RESULTS,
                {
                    "environment": env,
                    "checkpoint": checkpoint,
                    "call_and_response": answer,
                    "note": args.note,
                },
            )
            print(f"wrote {ANSWER_RESULTS}")
            print(
                f"call and response: first sound of a {args.answer_seconds:g} s answer "
                f"{answer['median_s']} s after the pause (median of {len(answer['latencies_s'])}"
                f"; target {TARGET_ANSWER_S:g} s, met: {answer['meets_target']})",
                flush=True,
            )
            if args.answer_only:
                return 0 if answer["meets_target"] else 1
            first_audio = {}
            seed = 1000
            for variations in (1, 2):
                runs = []
                for _ in range(args.repeats):
                    seed += 10
                    runs.append(
                        click_to_first_audio(server.url, args.seconds, variations, seed, latents)
                    )
                times = [r["first_audio_s"] for r in runs if r["first_audio_s"] is not None]
                first_audio[str(variations)] = {
                    "median_s": statistics.median(times) if times else None,
                    "runs": runs,
                }
                print(f"click -> first audio, {args.seconds:g} s, {variations} variation(s): "
                      + ", ".join(f"{t:.2f}" for t in times) + " s", flush=True)  # fmt: skip
            load = load_check(server.url, args.requests, args.seconds, tmp / "load")
            print(f"load: {load['requests']} concurrent /continue, {load['errors']} errors, "
                  f"p50 {load['p50_s']:.2f} s, p95 {load['p95_s']:.2f} s, "
                  f"{load['requests_per_s']:.2f} req/s", flush=True)  # fmt: skip
        finally:
            server.stop()
        dense = dense_first_audio(ckpt, args.dense_tokens, args.repeats, tmp)
        print(f"first audio at MAESTRO density ({args.dense_tokens} tokens, in process): "
              + ", ".join(f"{r['first_audio_s']:.2f}" for r in dense["runs"]) + " s",
              flush=True)  # fmt: skip

    med1 = first_audio["1"]["median_s"]
    results = {
        "environment": env,
        "checkpoint": checkpoint,
        "server": {
            "startup_s": startup,  # serving: the default settings' shapes compiled
            "all_shapes_compiled_s": all_shapes,  # the rest, in the background
            "max_concurrency": args.max_concurrency,
            "max_queue": max_queue,
        },
        "click_to_first_audio": {
            "seconds": args.seconds,
            "prime": "examples/bach_prelude_c.mid, last 20 s",
            "by_variations": first_audio,
            "target_s": TARGET_FIRST_AUDIO_S,
            "meets_target_1_variation": med1 is not None and med1 <= TARGET_FIRST_AUDIO_S,
            "at_maestro_density_in_process": dense,
        },
        "load": load,
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "note": args.note,
    }
    write_json(args.out, results)
    print(f"wrote {args.out}")
    print(f"click to first audio ({args.seconds:g} s, 1 variation): {med1} s "
          f"(target {TARGET_FIRST_AUDIO_S:g} s; checkpoint {checkpoint['name']} at step "
          f"{checkpoint['step']}, {checkpoint['num_latents']} latents)")  # fmt: skip
    return 0 if load["errors"] == 0 and med1 is not None else 1


if __name__ == "__main__":
    sys.exit(main())
