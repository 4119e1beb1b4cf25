"""Pure training / evaluation steps for a later trainer to build on.

Functional form (jit-friendly, works with orbax and any optax transformation)::

    model = PerceiverAR(cfg, rngs=nnx.Rngs(0))
    tx = optax.adamw(3e-4)
    graphdef, state = create_train_state(model, tx)
    train_step = make_train_step(graphdef, tx)
    state, metrics = train_step(state, {"tokens": tokens_Bx(N+1)}, jax.random.key(step))
    model = nnx.merge(graphdef, state.params)      # back to a module (e.g. for sampling)

NNX form (stateful, updates ``model`` and ``optimizer`` in place)::

    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    metrics = train_step(model, optimizer, batch, rng)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from perceiver_midi.model.losses import loss_fn


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # nnx.State of the model's parameters
    opt_state: Any


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation):
    """Splits ``model`` into a static graphdef and a ``TrainState`` (step 0)."""
    graphdef, params = nnx.split(model, nnx.Param)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    return graphdef, state


def make_train_step(
    graphdef, tx: optax.GradientTransformation, *, donate: bool = True
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """A jitted ``train_step(state, batch, rng) -> (state, metrics)``.

    ``batch["tokens"]`` is ``int32[B, N + 1]`` (left-padded with PAD); ``rng`` drives dropout and
    cross-attend input dropout. Metrics: loss, nll, accuracy, num_tokens, grad_norm.
    """

    def _step(state: TrainState, batch: dict, rng: jax.Array):
        def objective(params):
            model = nnx.merge(graphdef, params)
            return loss_fn(model, batch["tokens"], rng=rng, deterministic=False)

        (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return jax.jit(_step, donate_argnums=(0,) if donate else ())


def make_eval_step(graphdef) -> Callable[[Any, dict], dict]:
    """A jitted ``eval_step(params, batch) -> metrics`` (no dropout; sums for exact averaging)."""

    def _eval(params, batch):
        model = nnx.merge(graphdef, params)
        _, metrics = loss_fn(model, batch["tokens"], deterministic=True)
        return metrics

    return jax.jit(_eval)


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: dict, rng: jax.Array) -> dict:
    """NNX-style step: updates ``model``/``optimizer`` in place and returns the metrics."""

    def objective(model):
        return loss_fn(model, batch["tokens"], rng=rng, deterministic=False)

    (_, metrics), grads = nnx.value_and_grad(objective, has_aux=True)(model)
    optimizer.update(model, grads)
    return dict(metrics, grad_norm=optax.tree.norm(grads))
