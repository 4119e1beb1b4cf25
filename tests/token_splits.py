"""Synthetic prepared-token splits for training tests (the layout prepare-data writes)."""

import json
import pathlib

import numpy as np


def write_split(folder: pathlib.Path, pieces: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum([p.size for p in pieces])]).astype("<i8")
    np.concatenate(pieces).astype("<u2").tofile(folder / "tokens.u16")
    offsets.tofile(folder / "offsets.i64")
    with open(folder / "pieces.jsonl", "w") as f:
        for i, p in enumerate(pieces):
            f.write(json.dumps({"name": f"piece{i}", "tokens": int(p.size)}) + "\n")
    (folder / "DONE.json").write_text("{}")


def synthetic_data(root: pathlib.Path, seed: int = 0) -> pathlib.Path:
    """Pieces made of a few repeated 'bars' (learnable), with real MIDI token ids."""
    rng = np.random.default_rng(seed)
    bars = [rng.integers(3, 391, 12) for _ in range(4)]

    def piece(n_bars):
        return np.concatenate([bars[i] for i in rng.integers(0, 4, n_bars)]).astype(np.uint16)

    write_split(root / "train", [piece(int(rng.integers(5, 40))) for _ in range(30)])
    write_split(root / "validation", [piece(20) for _ in range(4)])
    write_split(root / "test", [piece(int(rng.integers(5, 30))) for _ in range(5)])
    return root
