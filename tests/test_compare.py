"""benchmarks/compare.py: paired comparison of two quality records, on hand-built records."""

import json

import numpy as np
import pytest

from benchmarks import compare as K
from benchmarks.music_metrics import FEATURES

PRIMES, DRAWS = 12, 2


def _record(scale: float, seed_offset: int = 0, split: str = "validation") -> dict:
    """A quality record whose generated features are the real ones times ``scale`` (1 = real)."""
    rng = np.random.default_rng(0)  # the same real continuations in every record
    pieces = []
    for draw in range(DRAWS):
        for i in range(PRIMES):
            real = {f: float(rng.uniform(0.5, 2.0)) for f in FEATURES}
            generated = {f: v * scale for f, v in real.items()}
            pieces.append(
                {
                    "index": i,
                    "draw": draw,
                    "name": f"piece{i}",
                    "seed": draw * 100 + i + seed_offset,
                    "real": {"features": real},
                    "generated": {"features": generated},
                    "looped": {"features": real},
                }
            )
    settings = {
        "split": split,
        "pieces": PRIMES,
        "seconds": 20.0,
        "prime_window": {"start": 60},
        "base_seed": 0,
        "draws": DRAWS,
    }
    return {"benchmark": "quality", "settings": settings, "pieces": pieces}


def test_a_record_against_itself_differs_by_nothing():
    result = K.compare(_record(1.3), _record(1.3), resamples=50)
    for row in result["statistics"].values():
        assert row["b_minus_a"] == 0.0
        assert row["interval95"] == [0.0, 0.0]
        assert row["b_ahead"] == 0.0
        assert row["a_interval95"] == row["b_interval95"]
        assert row["a_interval95"][0] <= row["a"] <= row["a_interval95"][1]
        assert [d["b_minus_a"] for d in row["by_draw"]] == [0.0] * DRAWS
    assert K.verdict(result["statistics"]["overall_score"]) == "not resolved"


def test_a_candidate_equal_to_real_is_ahead_of_one_far_from_it():
    result = K.compare(_record(1.8), _record(1.0), resamples=100)
    overall = result["statistics"]["overall_score"]
    assert overall["b"] == pytest.approx(1.0, abs=1e-3)  # same values as real: full overlap
    assert overall["a"] < 0.8
    assert overall["interval95"][0] > 0 and overall["b_ahead"] == 1.0
    assert K.verdict(overall) == "B ahead"
    assert (
        K.verdict(
            K.compare(_record(1.0), _record(1.8), resamples=20)["statistics"]["overall_score"]
        )
        == "A ahead"
    )
    for name in K.RATIOS:
        row = result["statistics"][name]
        assert row["a"] == pytest.approx(1.8) and row["b"] == pytest.approx(1.0)
        assert row["b_closer_to_real"] == 1.0
        assert row["b_interval95"] == pytest.approx([1.0, 1.0])  # every resample: same as real


@pytest.mark.parametrize(
    "b, message",
    [
        (_record(1.0, seed_offset=1), "their primes or seeds differ row by row"),
        (_record(1.0, split="test"), "split differs ('validation' vs 'test')"),
    ],
)
def test_unpaired_records_are_refused(b, message):
    with pytest.raises(K.UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        K.compare(_record(1.0), b)


def test_the_bootstrap_is_seeded():
    a, b = _record(1.2), _record(1.0)
    one = K.compare(a, b, resamples=30, seed=3)["statistics"]["overall_score"]["interval95"]
    two = K.compare(a, b, resamples=30, seed=3)["statistics"]["overall_score"]["interval95"]
    assert one == two


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        (json.dumps({"benchmark": "copying"}), "not a benchmarks/quality.py record"),
        (json.dumps({"benchmark": "quality", "pieces": []}), "a quality record with no pieces"),
    ],
)
def test_bad_records_are_one_line(content, message, tmp_path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_record(1.0)))
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    out = tmp_path / "out.json"
    assert K.main([str(good), str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_main_writes_the_comparison(tmp_path, capsys):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_record(1.5)))
    b.write_text(json.dumps(_record(1.0)))
    out = tmp_path / "cmp.json"
    assert K.main([str(a), str(b), "--resamples", "20", "--out", str(out)]) == 0
    assert "OVERALL SCORE: B ahead" in capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["a"] == str(a) and saved["statistics"]["overall_score"]["b_ahead"] == 1.0
    assert K.main([str(a), str(b), "--resamples", "0", "--out", str(out)]) == 2
