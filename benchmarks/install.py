"""Install time (GitHub issue 11): the README's first install command on a fresh venv, per commit.

    python benchmarks/install.py OLD_REF NEW_REF [--extra test,ray] [--python python3.11]

For each git ref: a detached worktree of it in a temporary folder, a fresh ``python -m venv``,
then ``pip install --no-cache-dir -e WORKTREE`` timed (wall clock, the whole resolve + download
+ install), and the installed distributions counted (``pip list``, pip itself included).
Worktree and venv are removed afterwards. Writes ``benchmarks/results/install.json``; the
numbers depend on the package index and network of the machine that ran it (recorded as pip's
configured index), so compare refs measured in the same run only.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.env import add_note_flag, add_out_flag, environment, write_json  # noqa: E402


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def measure(ref: str, python: str, extra: str) -> dict:
    commit = _git("rev-parse", ref)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="install-bench-"))
    tree, venv = tmp / "tree", tmp / "venv"
    _git("worktree", "add", "--detach", str(tree), commit)
    try:
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        pip = str(venv / "bin/pip")
        target = f"{tree}[{extra}]" if extra else str(tree)
        start = time.perf_counter()
        proc = subprocess.run(
            [pip, "install", "--no-cache-dir", "-q", "-e", target], capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(f"{ref}: pip install failed:\n{proc.stderr[-3000:]}")
        listed = subprocess.run(
            [pip, "list", "--format=json"], check=True, capture_output=True, text=True
        ).stdout
        names = sorted(p["name"].lower() for p in json.loads(listed))
        size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
        return {
            "ref": ref,
            "commit": commit,
            "seconds": round(seconds, 1),
            "packages": len(names),
            "venv_mib": round(size / 2**20),
            "names": names,
        }
    finally:
        _git("worktree", "remove", "--force", str(tree))
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("refs", nargs="+", help="git refs to measure, in order")
    parser.add_argument("--python", default="python3.11")
    parser.add_argument("--extra", default="", help="extras, e.g. test,ray (default: none)")
    add_out_flag(parser, ROOT / "benchmarks/results/install.json")
    add_note_flag(parser)
    args = parser.parse_args()
    index = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    runs = [measure(ref, args.python, args.extra) for ref in args.refs]
    first = set(runs[0]["names"])
    for r in runs[1:]:
        r["removed_vs_first"] = sorted(first - set(r["names"]))
        r["added_vs_first"] = sorted(set(r["names"]) - first)
    result = {
        "command": f"pip install --no-cache-dir -e .{f'[{args.extra}]' if args.extra else ''}",
        "pip_config": index.strip().splitlines(),
        "note": args.note,
        "environment": environment(),
        "runs": runs,
    }
    out = pathlib.Path(args.out)
    write_json(out, result)
    for r in runs:
        print(f"{r['ref']:>12} {r['commit'][:8]}: {r['seconds']:7.1f} s, {r['packages']} packages")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
