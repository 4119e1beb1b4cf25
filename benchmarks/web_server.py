"""The web app as a subprocess for the benchmarks and tests that need a real server
(``benchmarks/app.py``, ``benchmarks/soak.py``, ``tests/test_web_soak.py``): on 127.0.0.1 at a
free port, its output in a log file, its resident memory read from /proc."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants, MiB (VmRSS from /proc)."""
    pids, total = [pid], 0
    while pids:
        p = pids.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            with open(f"/proc/{p}/task/{p}/children") as f:
                pids += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total / 1024


class Server:
    """``python -m perceiver_midi.app`` on 127.0.0.1 in a subprocess (its output in a log)."""

    def __init__(
        self,
        checkpoint: str,
        *,
        infill_checkpoint: str | None,
        max_concurrency: int,
        max_queue: int,
        log: pathlib.Path,
        env: dict | None = None,
    ):
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        self.log = log
        cmd = [
            sys.executable,
            "-m",
            "perceiver_midi.app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--checkpoint",
            checkpoint,
            "--max-concurrency",
            str(max_concurrency),
            "--max-queue",
            str(max_queue),
        ]
        if infill_checkpoint:
            cmd += ["--infill-checkpoint", infill_checkpoint]
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=dict(
                os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", **(env or {})
            ),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 900.0, all_shapes: bool = True) -> float:
        """Seconds until the app answers and (``all_shapes``) its background warm-up is done:
        it serves once the default settings' shapes are compiled and compiles the rest after."""
        from perceiver_midi.app.web.page import ALL_SHAPES_COMPILED

        while time.perf_counter() - self.t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        if all_shapes:
                            return self.wait_log(ALL_SHAPES_COMPILED, timeout)
                        return time.perf_counter() - self.t0
            except OSError:
                time.sleep(0.5)
        raise TimeoutError(f"the app did not answer in {timeout:.0f} s:\n{self.tail()}")

    def wait_log(self, text: str, timeout: float = 1800.0) -> float:
        """Seconds from the start until ``text`` appears in the server's log."""
        while time.perf_counter() - self.t0 < timeout:
            if text in self.log.read_text(errors="replace"):
                return time.perf_counter() - self.t0
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited ({self.proc.returncode}):\n{self.tail()}")
            time.sleep(1.0)
        raise TimeoutError(f"no {text!r} in the app's log in {timeout:.0f} s:\n{self.tail()}")

    def rss_mib(self) -> float:
        return rss_mib(self.proc.pid)

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
