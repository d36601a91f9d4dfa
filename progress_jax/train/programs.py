"""The bodies of the trainers' programs; progress_jax/jobs.py jits them with their shardings.

SFT (`train_step`): masked token-level NLL on the answer tokens, summed and divided by the number
of target tokens of the whole global batch, so that k accumulated micro-batches give exactly the
loss and gradients of one batch of k times the rows.

GRPO (`logprobs`, `ref_logprobs`, `train_step`): per-token log-probs at the rollout temperature
(logits / temperature, as EasyR1/verl take them), and the update: the clipped dual-clip surrogate
+ kl_coef * low_var_kl (progress_jax/train/grpo_loss.py) as a token-mean over all response tokens
of its global batch, exact under micro-batching.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from progress_jax import chunked, lora
from progress_jax.train import grpo_loss, loop


# ---- SFT -------------------------------------------------------------------------------------

def nll_sum(model, mb: dict, mesh=None, dropout_rng=None, remat: str = "none", loss_chunk: int = 0):
    """Sum of target-token NLLs of one micro-batch (arrays as positions.model_inputs gives them,
    plus loss_mask). loss_chunk > 0: logits computed (and recomputed in the backward pass) for
    that many positions at a time, never the whole [B, L, V] at once (progress_jax/chunked.py)."""
    ids = mb["input_ids"]
    hidden = loop.hidden_states(model, mb, mesh, remat, dropout_rng)

    def nll(h, targets):
        logits = model.logits(h)  # float32
        return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]

    weights = mb["loss_mask"][:, 1:].astype(jnp.float32)
    return jnp.sum(chunked.map_positions(nll, loss_chunk, hidden[:, :-1], ids[:, 1:]) * weights)


def loss_and_grads(parts: loop.Parts, params: dict, frozen, batch: dict, rng=None, mesh=None,
                   remat: str = "none", loss_chunk: int = 0):
    """(loss, grads, target token count) of a batch whose arrays carry a leading micro-batch axis
    [k, ...]: NLL sums and their gradients are summed over the k micro-batches (a scan), then
    divided by the global count of target tokens. rng: LoRA-dropout key (None: no dropout)."""
    n_tokens = jnp.maximum(batch["loss_mask"][:, :, 1:].sum(), 1).astype(jnp.float32)

    def micro(carry, xs):
        i, mb = xs
        key = None if rng is None else jax.random.fold_in(rng, i)
        f = lambda p: nll_sum(parts.model(p, frozen), mb, mesh, key, remat, loss_chunk)
        s, g = jax.value_and_grad(f)(params)
        return (carry[0] + s, jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry[1], g)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    k = batch["input_ids"].shape[0]
    (total, grads), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), (jnp.arange(k), batch))
    return total / n_tokens, jax.tree.map(lambda g: g / n_tokens, grads), n_tokens


def make_step(parts: loop.Parts, tx, mesh=None, remat: str = "none", loss_chunk: int = 0, dropout: bool = True):
    """step(state, frozen, batch) -> (state, metrics): one optimizer step on the accumulated
    gradients of the batch's micro-batches (see loss_and_grads)."""
    def step(state, frozen, batch):
        rng = jax.random.fold_in(state["rng"], state["step"]) if dropout else None
        loss, grads, n_tokens = loss_and_grads(parts, state["params"], frozen, batch, rng, mesh, remat, loss_chunk)
        new_state = loop.apply_gradients(state, grads, tx)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "target_tokens": n_tokens}

    return step


# ---- GRPO ------------------------------------------------------------------------------------

def predecessors(attention_mask):
    """[B, L-1]: for each token t = 1 .. L-1, the position whose hidden state predicts it: t - 1,
    or, for the first token of a segment k >= 2 (a response of a shared-prompt group; attention
    codes of layers.causal_attention), the last shared token before it (the prompt's end)."""
    codes = attention_mask.astype(jnp.int32)
    t = jnp.arange(codes.shape[1])
    last_shared = jax.lax.cummax(jnp.where(codes == 1, t, -1), axis=1)  # [B, L]
    first = (codes[:, 1:] >= 2) & (codes[:, 1:] != codes[:, :-1])
    return jnp.where(first, last_shared[:, :-1], t[None, :-1])


def token_logps(model, mb: dict, temperature: float, mesh=None, remat: str = "none", loss_chunk: int = 0):
    """log p(token t | the tokens it follows) at the given temperature for t = 1 .. L-1 [B, L-1],
    and the per-token entropy of that distribution. A response of a shared-prompt group follows the
    prompt and its own earlier tokens (predecessors). loss_chunk > 0: the logits of that many
    positions at a time (progress_jax/chunked.py)."""
    ids = mb["input_ids"]
    hidden = loop.hidden_states(model, mb, mesh, remat)
    hidden = jnp.take_along_axis(hidden, predecessors(mb["attention_mask"])[..., None], axis=1)

    def per_position(h, targets):
        logp_all = jax.nn.log_softmax(model.logits(h) / temperature, axis=-1)
        logp = jnp.take_along_axis(logp_all, targets[..., None], axis=-1)[..., 0]
        return logp, -jnp.sum(jnp.exp(logp_all) * logp_all, axis=-1)

    return chunked.map_positions(per_position, loss_chunk, hidden, ids[:, 1:])


def make_logp_fn(parts: loop.Parts, temperature: float, mesh=None, remat: str = "none", off: bool = False,
                 loss_chunk: int = 0):
    """(params, frozen, micro-batches [k, ...]) -> log-probs [k, B, L-1]; off=True: LoRA switched off."""
    def fn(params, frozen, batch):
        p = lora.lora_off(params) if off else params
        model = parts.model(p, frozen)
        return jax.lax.map(lambda mb: token_logps(model, mb, temperature, mesh, remat, loss_chunk)[0], batch)

    return fn


def make_update(parts: loop.Parts, tx, g, temperature: float, mesh=None, remat: str = "none", loss_chunk: int = 0):
    """update(state, frozen, batch) -> (state, metrics): gradients of the GRPO loss summed over the
    batch's micro-batches, each divided by the global response-token count (exact token-mean)."""
    def update(state, frozen, batch):
        mask_all = batch["loss_mask"][:, :, 1:].astype(jnp.float32)
        n_tokens = jnp.maximum(mask_all.sum(), 1.0)

        def micro(carry, mb):
            def loss_fn(params):
                logp, entropy = token_logps(parts.model(params, frozen), mb, temperature, mesh, remat, loss_chunk)
                mask = mb["loss_mask"][:, 1:].astype(jnp.float32)
                ref = mb["ref_logp"] if g.kl_coef else None
                loss, m = grpo_loss.grpo_loss(logp, mb["old_logp"], ref, mb["advantages"], mask, n_tokens,
                                              kl_coef=g.kl_coef, clip_low=g.clip_low, clip_high=g.clip_high,
                                              dual_clip=g.dual_clip)
                m["entropy"] = grpo_loss.token_mean(entropy, mask, n_tokens)
                return loss, m

            (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
            acc = jax.tree.map(lambda a, b: a + b.astype(jnp.float32), carry, (grads, m))
            return acc, None

        zeros_g = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state["params"])
        metric_keys = ("pg_loss", "clip_frac", "dual_clip_frac", "entropy", "loss") + (("kl",) if g.kl_coef else ())
        zeros_m = {k: jnp.zeros((), jnp.float32) for k in metric_keys}
        (grads, metrics), _ = jax.lax.scan(micro, (zeros_g, zeros_m), batch)
        new_state = loop.apply_gradients(state, grads, tx)
        return new_state, {**metrics, "grad_norm": optax.tree.norm(grads), "response_tokens": n_tokens}

    return update
