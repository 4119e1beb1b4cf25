"""What the benchmarks share: hardware and versions recorded with every result, how results are
written, the machine's load and peak memory, timing loops, the common command-line flags."""

import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import time
from importlib import metadata


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    versions = {}
    for pkg in ("numpy", "numba", "jax", "jaxlib", "flax", "optax", "note-seq", "pretty-midi"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def write_json(path: str | os.PathLike, data: dict) -> None:
    """``data`` as indented JSON at ``path``, atomically (temp file, then rename).

    The file gets the ordinary mode (0666 less the umask: 0644 under umask 022), not the 0600 a
    bare ``mkstemp`` gives, so results can be read by others and are committed as 0644.
    """
    from perceiver_midi.tokenizer import atomic_write_bytes

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def training_beside() -> list[str]:
    """Training jobs running on this machine (their timings share the cores with ours)."""
    try:
        out = subprocess.run(
            ["pgrep", "-af", "perceiver-midi train"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    me = str(os.getpid())  # our own command line may mention it (--note)
    return [line[:200] for line in out.splitlines() if line.strip() and line.split()[0] != me]


def run_worker(script: str, kind: str, timeout: float, **options) -> dict:
    """Runs ``python SCRIPT --worker KIND --option value ...`` (``True``: the bare flag, ``False``:
    left out) in its own process and returns the JSON object of its last ``{...}`` stdout line,
    or ``{"error": ...}`` on a timeout or a failure (one line printed either way)."""
    cmd = [sys.executable, script, "--worker", kind]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            cmd.append(flag)
        elif value is not False:
            cmd += [flag, str(value)]
    print(f"  running {' '.join(cmd[3:])} ...", flush=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        print(f"    timed out after {timeout:.0f} s", flush=True)
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"    failed (rc={proc.returncode}): {' | '.join(tail)}", flush=True)
        return {"error": f"rc={proc.returncode}: {' | '.join(tail)}"}
    print(f"    done in {time.perf_counter() - t0:.0f} s", flush=True)
    return json.loads(lines[-1])


def save_png(fig, path: str | os.PathLike, dpi: int = 80) -> None:
    """A matplotlib figure as a PNG at ``path``, atomically (temp file, then rename); closes it."""
    import io

    import matplotlib.pyplot as plt

    from perceiver_midi.tokenizer import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (``ru_maxrss``: KiB on Linux)."""
    import resource  # POSIX only: imported where used

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def system_load() -> dict:
    """The load averages (1, 5, 15 min) and, where the kernel has it, the CPU pressure line."""
    info = {"loadavg": os.getloadavg()}
    try:
        info["cpu_pressure"] = pathlib.Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        pass
    return info


def call_times(fn, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn()`` (no warm-up call: the caller's choice)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def add_checkpoint_flag(parser, repeatable: bool = False) -> None:
    """``--checkpoint DIR`` (default None: the shipped one), or, ``repeatable``, a list of them."""
    if repeatable:
        parser.add_argument("--checkpoint", action="append", help="checkpoint folder (repeatable)")
    else:
        parser.add_argument("--checkpoint", help="checkpoint folder (default: the shipped one)")


def add_out_flag(parser, default: str | os.PathLike) -> None:
    """``--out PATH``: the results JSON, ``default`` the benchmark's file in ``results/``."""
    parser.add_argument("--out", default=str(default), help="results JSON (default: %(default)s)")


def add_rolls_flag(parser, default: str | os.PathLike | None, help: str) -> None:
    """``--rolls PATH``: a piano-roll PNG; ``none`` (any case) skips it. Read by ``rolls_path``."""
    parser.add_argument(
        "--rolls", default=None if default is None else str(default), help=f"{help}; 'none' to skip"
    )


def rolls_path(value: str | None) -> pathlib.Path | None:
    """The ``--rolls`` value as a path, or None for no PNG (left out, empty or ``none``)."""
    if not value or value.lower() == "none":
        return None
    return pathlib.Path(value)


def add_note_flag(parser) -> None:
    """``--note TEXT`` (default ""): a remark stored with the results."""
    parser.add_argument(
        "--note", default="", help="a remark stored with the results (e.g. machine load)"
    )
