"""Tokenizer speed: ours vs note-seq on the same MAESTRO files, in one run.

    python benchmarks/tokenizer.py [--maestro DIR] [--files 40] [--repeats 3]

1. The same N files (spread over the test split) through note-seq's MAESTRO pipeline and through
   ours; ids are checked equal; per-file times -> events/s; the ratio is the last printed line.
2. All MAESTRO files with ours on all cores (process pool), wall time.
Writes benchmarks/results/tokenizer.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import csv
import os
import pathlib
import statistics
import sys
import time
import warnings

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
if not __package__:  # a script run (not python -m benchmarks.x): benchmarks.* need the repo root
    sys.path.insert(0, str(ROOT))

from benchmarks.env import add_out_flag, environment, write_json  # noqa: E402
from perceiver_midi.tokenizer import encode  # noqa: E402


def note_seq_ids(path: str) -> np.ndarray:
    import note_seq
    from note_seq import midi_io, performance_lib, sequences_lib

    enc = note_seq.PerformanceOneHotEncoding(num_velocity_bins=32, max_shift_steps=100)
    ns = midi_io.midi_file_to_note_sequence(path)
    ns = sequences_lib.apply_sustain_control_changes(ns)
    q = sequences_lib.quantize_note_sequence_absolute(ns, 100)
    perf = performance_lib.Performance(q, num_velocity_bins=32, max_shift_steps=100)
    return np.array([enc.encode_event(e) + 3 for e in perf])


def _encode_len(path: str) -> int:
    return int(encode(path).size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maestro", default=str(ROOT.parent / "shared/data/maestro-v3.0.0"))
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes of ours per file")
    add_out_flag(ap, ROOT / "benchmarks/results/tokenizer.json")
    args = ap.parse_args()
    root = pathlib.Path(args.maestro)
    with open(root / "maestro-v3.0.0.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    test = [r for r in rows if r["split"] == "test"]
    chosen = [str(root / r["midi_filename"]) for r in test[:: max(1, len(test) // args.files)]]
    chosen = chosen[: args.files]
    encode(chosen[0])  # compile / load the numba cache outside the timing
    warnings.simplefilter("ignore")
    note_seq_ids(chosen[0])  # import note-seq outside the timing

    ns_times, our_times, events = [], [], 0
    for path in chosen:
        t0 = time.perf_counter()
        ref = note_seq_ids(path)
        ns_times.append(time.perf_counter() - t0)
        best = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            ours = encode(path)
            best.append(time.perf_counter() - t0)
        our_times.append(statistics.median(best))
        if not np.array_equal(ours, ref):
            raise SystemExit(f"ids differ from note-seq on {path}")
        events += ours.size
    ns_eps = events / sum(ns_times)
    our_eps = events / sum(our_times)
    print(f"{len(chosen)} MAESTRO test files, {events:,} events, ids identical to note-seq")
    print(f"note-seq: median {statistics.median(ns_times) * 1e3:.1f} ms/file, {ns_eps:,.0f} ev/s")
    print(f"ours:     median {statistics.median(our_times) * 1e3:.2f} ms/file, {our_eps:,.0f} ev/s")

    all_files = [str(root / r["midi_filename"]) for r in rows]
    workers = os.cpu_count() or 1
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(workers) as pool:
        total = sum(pool.map(_encode_len, all_files, chunksize=8))
    all_s = time.perf_counter() - t0
    print(f"all {len(all_files)} MAESTRO files on {workers} cores: {all_s:.1f} s, {total:,} tokens")

    ratio = our_eps / ns_eps
    result = {
        "environment": environment(),
        "files_compared": len(chosen),
        "events_compared": events,
        "ids_identical": True,
        "note_seq": {
            "median_ms_per_file": statistics.median(ns_times) * 1e3,
            "events_per_s": ns_eps,
        },
        "ours": {
            "median_ms_per_file": statistics.median(our_times) * 1e3,
            "events_per_s": our_eps,
        },
        "speedup_events_per_s": ratio,
        "all_maestro": {
            "files": len(all_files),
            "tokens": total,
            "seconds": all_s,
            "workers": workers,
        },
        "targets": {"speedup": 50, "all_maestro_seconds": 20},
    }
    write_json(args.out, result)
    print(f"speedup vs note-seq (events/s): {ratio:.0f}x")


if __name__ == "__main__":
    main()
