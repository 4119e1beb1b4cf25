"""Benchmark plumbing: results files are written atomically with ordinary permissions."""

import json
import os
import stat

import pytest

from benchmarks.env import write_json


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_write_json_mode_follows_umask(tmp_path, umask, mode):
    out = tmp_path / "results" / "x.json"
    old = os.umask(umask)
    try:
        write_json(out, {"a": 1})
        write_json(out, {"a": 2})  # replacing keeps the ordinary mode too
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert json.loads(out.read_text()) == {"a": 2}
    assert [p.name for p in out.parent.iterdir()] == ["x.json"]  # no temp file left


def test_model_quick_run_never_marks_a_target():
    from benchmarks.model import _targets

    results = {
        "train_target_tokens_per_s_ratio": {"4096": 2.9},
        "train_step_speedup_per_step": {"4096": 23.0},
        "sample_tokens_per_s": {"batch1": 900.0, "batch16": 1000.0},
        "sample_cached_over_uncached": 30.0,
        "flop_utilisation": {"utilisation": 0.5},
        "train": {"65536": {"perceiver_ar": {"peak_rss_mib": 2000.0}}},
    }
    quick = _targets(results, quick=True)
    assert {t["result"] for t in quick.values()} == {"not checked (quick)"}
    full = _targets(results, quick=False)
    verdict = {name: t["result"] for name, t in full.items()}
    assert verdict["Perceiver AR target tokens/s > Transformer's at N=4096"] == "met"
    assert verdict["Perceiver AR target tokens/s > Transformer's at N=16384"] == "not run"
    assert verdict["sampling batch 16 >= 4000 tok/s"] == "missed"
    assert verdict["N=65536 trains within 24 GiB"] == "met"
