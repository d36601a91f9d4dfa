"""The whole Qwen2.5-VL: vision tower, image features at the image-pad positions, decoder, LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from progress_jax import sharding

from . import partition, positions
from .config import Qwen25VLConfig
from .language import DecoderLayer, mrope_cos_sin
from .layers import REMAT_POLICIES, Linear, RMSNorm, matmul, redraw_fan_in, scan_layers, stacked
from .vision import VisionTower


class Qwen25VL(nnx.Module):
    """Parameters: `layers` is ONE DecoderLayer whose parameters carry a leading axis of
    num_hidden_layers (`layers/self_attn/q_proj/kernel` [layers, in, out]), `visual/blocks` one
    VisionBlock with a leading axis of the tower's depth; both run under jax.lax.scan (see
    layers.scan_layers), so compile time does not grow with depth."""

    partition_rules = partition.PARTITION_RULES  # how its parameters shard (progress_jax.sharding)

    def __init__(self, config: Qwen25VLConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        config.validate()
        t = config.text
        self.config = config
        self.dtype = dtype
        self.visual = VisionTower(config.vision, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embed_tokens = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (t.vocab_size, t.hidden_size), param_dtype))
        self.layers = stacked(lambda r: DecoderLayer(t, dtype=dtype, param_dtype=param_dtype, rngs=r),
                              t.num_hidden_layers, rngs)
        self.norm = RMSNorm(t.hidden_size, eps=t.rms_norm_eps, param_dtype=param_dtype)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else Linear(t.hidden_size, t.vocab_size, bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        )
        if config.init == "fan_in":
            redraw_fan_in(self, rngs, param_dtype)

    # ---- host-side preparation -------------------------------------------------------------

    def prepare(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None) -> dict:
        """NumPy arrays for `forward` (M-RoPE positions, rope deltas, vision indices); see
        positions.model_inputs."""
        ids = np.asarray(input_ids)
        batch = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids) if attention_mask is None else attention_mask,
            "pixel_values": pixel_values,
            "image_grid_thw": image_grid_thw,
        }
        if pixel_values is not None and image_grid_thw is None:
            raise ValueError("pixel_values given without image_grid_thw")
        return positions.model_inputs(batch, self.config)

    # ---- compiled path ---------------------------------------------------------------------

    def embed(self, input_ids, pixel_values=None, vision=None, remat="none"):
        """Token embeddings with image features at the image-pad tokens. pixel_values [P, 1176]
        with `vision` from positions.vision_inputs, or per batch shard [S, P_s, 1176] with `vision`
        arrays stacked on a leading S axis (family.stack_micro): the rows split into S contiguous
        groups, shard s holding the images of group s; the tower runs on each shard separately, so
        with S split over the data axes each device encodes its own rows' images only. remat: the
        vision blocks' rematerialisation policy (none | full | dots)."""
        x = self.embed_tokens[...][input_ids].astype(self.dtype)
        if pixel_values is None:
            return x
        pixel_values = jnp.asarray(pixel_values)
        if pixel_values.ndim == 3 and pixel_values.shape[0] == 1:  # one shard: the plain layout
            pixel_values, vision = pixel_values[0], jax.tree.map(lambda v: v[0], vision)
        if pixel_values.ndim == 2:
            feats = self.visual(pixel_values, vision, remat=remat)[None]
        else:
            graphdef, state = nnx.split(self.visual)
            tower = lambda st, pv, vis: nnx.merge(graphdef, st)(pv, vis, remat=remat)
            feats = jax.vmap(tower, in_axes=(None, 0, 0))(state, pixel_values, vision)
        feats = feats.astype(self.dtype)  # [S, U, D]
        S, B, L = feats.shape[0], *input_ids.shape
        is_img = (input_ids == self.config.image_token_id).reshape(S, -1)
        # Features fill a shard's image-pad tokens in row-major (sample, position) order.
        idx = jnp.clip(jnp.cumsum(is_img, axis=1) - 1, 0, feats.shape[1] - 1)
        img = jnp.take_along_axis(feats, idx[..., None], axis=1).reshape(B, L, -1)
        return jnp.where(is_img.reshape(B, L)[..., None], img, x)

    def decode(self, x, position_ids, kv_mask, cache=None, cache_index=0, dropout_rng=None, remat="none"):
        """Decoder over embeddings x [B, T, D]. kv_mask [B, S] codes the key slots (S = T without a
        cache, the cache length with one): 0 padding, 1 a real token, k >= 2 a token of a segment
        that only its own segment sees (layers.causal_attention); queries occupy slots
        cache_index .. cache_index + T - 1.
        dropout_rng: key for LoRA dropout (training only). remat: none | full | dots, the
        rematerialisation policy of each decoder layer (training without a cache).
        Returns final hidden states (normed) and the updated cache."""
        mask = kv_mask.astype(jnp.int32)  # [B, S]; causal part built per query block (layers.causal_attention)
        cos, sin = mrope_cos_sin(position_ids, self.config.text)
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {remat!r}")

        def layer_step(layer, carry, i):
            x, cache = carry
            rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, i)
            return layer(x, cos, sin, mask, cache, cache_index, dropout_rng=rng, layer=i)

        n = self.config.text.num_hidden_layers
        # Remat only matters where gradients flow (training runs without a cache).
        x, cache = scan_layers(self.layers, layer_step, (x, cache), jnp.arange(n),
                               remat=remat if cache is None else "none")
        return self.norm(x), cache

    def decode_slots(self, x, position_ids, fill, cache, blocks, block: int):
        """One decode step of the rollout engine (progress_jax/sampling.py) over its slots: x [S, 1, D]
        the embeddings of each slot's last token, position_ids [3, S, 1]; slot s writes that
        token's keys and values at cache slot fill[s] and attends to slots 0 .. fill[s], reading
        the cache's first `blocks` blocks of `block` slots only. Returns the final hidden states
        (normed) and the updated cache."""
        cos, sin = mrope_cos_sin(position_ids, self.config.text)

        def layer_step(layer, carry, i):
            x, cache = carry
            return layer.decode_slots(x, cos, sin, cache, fill, blocks, block, i)

        x, cache = scan_layers(self.layers, layer_step, (x, cache), jnp.arange(self.config.text.num_hidden_layers))
        return self.norm(x), cache

    def logits(self, hidden):
        if self.lm_head is not None:
            return self.lm_head(hidden).astype(jnp.float32)
        return matmul(hidden.astype(self.dtype), self.embed_tokens[...], transpose_w=True).astype(jnp.float32)

    def forward(self, input_ids, attention_mask, position_ids, pixel_values=None, vision=None, dropout_rng=None,
                remat="none"):
        """Full forward on arrays only (jit-friendly). Returns logits [B, L, V] in float32."""
        x = self.embed(input_ids, pixel_values, vision, remat=remat)
        hidden, _ = self.decode(x, position_ids, attention_mask, dropout_rng=dropout_rng, remat=remat)
        return self.logits(hidden)

    def init_cache(self, batch: int, length: int, dtype=None, mesh=None):
        """The KV cache {"k", "v": [layers, batch, length, kv_heads, head_dim]}, carried through the
        layer scan. With a mesh: rows split over the data axes, KV heads over `tensor` where it
        divides them (inside jit, a sharding constraint)."""
        t = self.config.text
        shape = (t.num_hidden_layers, batch, length, t.num_key_value_heads, t.head_dim)
        dtype = dtype or self.dtype
        return self._shard_cache({"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}, mesh)

    def cache_sharding(self, mesh):
        """The KV cache's sharding: rows split over the data axes, KV heads over `tensor` where it
        divides them."""
        heads = "tensor" if self.config.text.num_key_value_heads % mesh.shape["tensor"] == 0 else None
        return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding.BATCH, None, heads, None))

    def _shard_cache(self, cache, mesh):
        if mesh is None:
            return cache
        return jax.lax.with_sharding_constraint(cache, {"k": self.cache_sharding(mesh), "v": self.cache_sharding(mesh)})

    # ---- convenience API -------------------------------------------------------------------

    def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None):
        """logits [B, L, V] for NumPy or JAX inputs; `pixel_values` laid out as transformers'
        processor lays them out ([total_patches, 1176])."""
        prep = jax.tree.map(jnp.asarray, self.prepare(input_ids, attention_mask, pixel_values, image_grid_thw))
        return self.forward(
            prep["input_ids"], prep["attention_mask"], prep["position_ids"], prep.get("pixel_values"), prep.get("vision")
        )
