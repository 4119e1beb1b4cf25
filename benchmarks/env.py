"""Hardware and versions recorded with every benchmark result, and how results are written."""

import datetime
import json
import os
import pathlib
import platform
import subprocess
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
    from tokenizer import atomic_write_bytes

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
