"""Loss at the latent positions: cross-entropy with PAD ignored, plus optional z-loss.

A target counts when it is not PAD and the latent's own input is not PAD (the first real token of
a left-padded window, normally SOS, is an input, never a target).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from perceiver_midi.model.vocab import PAD_ID, VOCAB_SIZE


def cross_entropy_with_z_loss(
    logits_BxMxV: jax.Array,
    targets_BxM: jax.Array,
    z_loss: float = 0.0,
    weights_BxM: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Summed NLL, z-loss and counts over non-PAD targets (float32).

    z-loss (PaLM / T5X) is ``z_loss * log(Z)^2`` per token, keeping the softmax normaliser near 1.
    ``weights_BxM`` (optional) further restricts which targets count.
    """
    logits_BxMxV = logits_BxMxV.astype(jnp.float32)
    valid_BxM = targets_BxM != PAD_ID
    if weights_BxM is not None:
        valid_BxM = valid_BxM & (weights_BxM > 0)
    weights_BxM = valid_BxM.astype(jnp.float32)
    targets_BxM = jnp.where(valid_BxM, targets_BxM, PAD_ID)  # in range: no NaN times 0
    log_z_BxM = jax.nn.logsumexp(logits_BxMxV, axis=-1)
    target_logit_BxM = jnp.take_along_axis(logits_BxMxV, targets_BxM[..., None], axis=-1)[..., 0]
    nll_BxM = log_z_BxM - target_logit_BxM
    correct_BxM = jnp.argmax(logits_BxMxV, axis=-1) == targets_BxM
    return {
        "nll_sum": jnp.sum(nll_BxM * weights_BxM),
        "z_loss_sum": z_loss * jnp.sum(jnp.square(log_z_BxM) * weights_BxM),
        "correct_sum": jnp.sum(correct_BxM * weights_BxM),
        "num_tokens": jnp.sum(weights_BxM),
    }


def split_batch(tokens_BxT: jax.Array, num_latents: int):
    """``tokens[B, N+1]`` (left-padded) -> inputs ``[B, N]``, the latents' targets ``[B, M]`` and
    their weights ``[B, M]`` (1 where both the target and the latent's own input are not PAD, and
    the target is not an infilling sentinel)."""
    inputs_BxN = tokens_BxT[:, :-1]
    m = min(num_latents, inputs_BxN.shape[1])
    targets_BxM = tokens_BxT[:, -m:]
    weights_BxM = (
        (targets_BxM != PAD_ID)
        & (targets_BxM < VOCAB_SIZE)  # an infilling sentinel is read, never predicted
        & (inputs_BxN[:, -m:] != PAD_ID)
    ).astype(jnp.float32)
    return inputs_BxN, targets_BxM, weights_BxM


def loss_fn(model, tokens_BxT: jax.Array, *, rng: jax.Array | None = None, deterministic=False):
    """Mean loss over the non-PAD targets at the latent positions, and metrics.

    Args:
      model: a ``PerceiverAR``.
      tokens_BxT: ``[B, N + 1]`` token windows, left-padded with PAD; the inputs are
        ``tokens[:, :-1]`` and the targets of the M latents are ``tokens[:, -M:]``.
      rng: dropout / cross-attend dropout key (needed unless ``deterministic``).
      deterministic: disable dropout (evaluation).

    Returns:
      ``(loss, metrics)`` where ``loss = (nll + z_loss) / num_tokens`` and metrics holds ``loss``,
      ``nll`` (mean, nats/token), ``accuracy`` and ``num_tokens``.
    """
    cfg = model.config
    inputs_BxN, targets_BxM, weights_BxM = split_batch(tokens_BxT, cfg.num_latents)
    logits_BxMxV = model(inputs_BxN, deterministic=deterministic, rng=rng)
    sums = cross_entropy_with_z_loss(logits_BxMxV, targets_BxM, cfg.z_loss, weights_BxM)
    denom = jnp.maximum(sums["num_tokens"], 1.0)
    loss = (sums["nll_sum"] + sums["z_loss_sum"]) / denom
    metrics = {
        "loss": loss,
        "nll": sums["nll_sum"] / denom,
        "accuracy": sums["correct_sum"] / denom,
        "num_tokens": sums["num_tokens"],
    }
    return loss, metrics
