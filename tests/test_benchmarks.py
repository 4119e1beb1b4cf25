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
