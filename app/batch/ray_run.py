"""The Ray path of a batch run: the model's serialisation for workers (config + numpy params),
the worker actor, and the driver loop that hands groups to actors and yields their results in
plan order (so the manifest is identical to a local run). See :mod:`app.batch.run`.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re
import warnings
from typing import Any

import numpy as np

from perceiver_midi.app.batch.group import read_primes, run_group
from perceiver_midi.app.batch.plan import Item
from perceiver_midi.app.core.errors import UserError
from perceiver_midi.app.core.pipeline import OutputOptions
from perceiver_midi.app.core.render import soundfont_bytes
from perceiver_midi.model.config import Config
from perceiver_midi.model.perceiver_ar import PerceiverAR


def model_blob(model) -> tuple[dict, Any]:
    """(config dict, float32 numpy params): what a Ray worker needs to rebuild the model."""
    import jax
    from flax import nnx

    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return dataclasses.asdict(model.config), jax.tree.map(np.asarray, params)


def model_from_blob(blob):
    from flax import nnx

    config, params = blob
    model = PerceiverAR(Config(**config), rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model


class _Worker:
    """A Ray actor: holds the model (and its compiled sampler) for all its groups."""

    def __init__(self, blob, options: OutputOptions):
        self.model = model_from_blob(blob)
        self.options = options

    def run(self, group: list[Item], prime_data: dict) -> list[dict]:
        return run_group(self.model, group, prime_data, self.options)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fails fast (one line) when a ``host:port`` / ``ray://host:port`` address does not answer;
    Ray itself would retry for minutes. Other forms (``auto``) are left to Ray."""
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\]/]+?)\]?:(\d+)", address.strip())
    if not m:
        return
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"cannot reach Ray at {address} ({reason})") from None


def _run_ray(model, groups, options: OutputOptions, address: str, workers: int | None):
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'perceiver-midi[ray]'") from None
    started = False
    if not ray.is_initialized():
        kwargs = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if address == "local":
            # A local Ray stays on loopback: no traffic to the machine's other addresses. Its
            # workers run this Python, where perceiver_midi is installed (editable or wheel): no
            # PYTHONPATH to add (the folder above app/ would expose app, model, tokenizer).
            kwargs.update(num_cpus=os.cpu_count() or 1, _node_ip_address="127.0.0.1")
        else:
            _check_reachable(address)
            kwargs["address"] = address
        try:
            with warnings.catch_warnings():  # JAX warns about Ray's fork+exec of its daemons
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
                ray.init(**kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError...
            raise UserError(f"cannot start or reach Ray at {address}: {exc}") from None
        started = True
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(workers or cpus, len(groups)))
        if options.synth == "midirenderer" and options.audio != "none":
            options = dataclasses.replace(options, soundfont=soundfont_bytes(options.soundfont))
        actor = ray.remote(num_cpus=1)(_Worker)
        blob = ray.put(model_blob(model))
        opts = ray.put(options)
        actors = [actor.remote(blob, opts) for _ in range(n)]
        inflight: collections.deque = collections.deque()
        todo = iter(enumerate(groups))

        def submit():
            nxt = next(todo, None)
            if nxt is not None:
                i, g = nxt
                inflight.append((g, actors[i % n].run.remote(g, read_primes(g))))

        for _ in range(2 * n):
            submit()
        while inflight:  # results in plan order: the manifest is identical to a local run
            g, ref = inflight.popleft()
            outs = ray.get(ref)
            submit()
            yield g, outs
        for a in actors:
            ray.kill(a)
    finally:
        if started:
            ray.shutdown()
