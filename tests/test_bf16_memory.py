"""bf16 weights on XLA:CPU: every dot converts its weight to float32 where it is used, never all of
them up front (see layers.matmul), and the gradients are those of a plain matmul."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from progress_jax import lora
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl.layers import matmul


def test_bf16_matmul_value_and_gradients_equal_a_plain_matmul():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 3, 8)), jnp.bfloat16)
    w = jnp.asarray(rng.standard_normal((8, 5)), jnp.bfloat16)
    c = jnp.asarray(rng.standard_normal((2, 3, 5)), jnp.bfloat16)
    for transpose in (False, True):
        wt = w.T if transpose else w
        ours = lambda x, w: jnp.sum((matmul(x, w, transpose_w=transpose) * c).astype(jnp.float32))
        plain = lambda x, w: jnp.sum(((x @ (w.T if transpose else w)) * c).astype(jnp.float32))
        v1, g1 = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(x, wt)
        v2, g2 = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(x, wt)
        np.testing.assert_allclose(v1, v2, rtol=1e-2)
        for a, b in zip(g1, g2):
            assert a.dtype == b.dtype == jnp.bfloat16 and a.shape == b.shape
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=2e-2, atol=2e-2)


def _model(layers: int):
    base = qwen2_5_vl.tiny()
    cfg = dataclasses.replace(
        base, text=dataclasses.replace(base.text, hidden_size=256, intermediate_size=2048, num_attention_heads=8,
                                       num_hidden_layers=layers),
        vision=dataclasses.replace(base.vision, out_hidden_size=256))
    model = qwen2_5_vl.init(cfg, seed=0, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    lora.inject(model, 4, 8.0)
    return model


def _temp_bytes(layers: int, train: bool, licm: bool = False) -> int:
    """XLA's temporary bytes for a forward (or LoRA gradient) over 64 text tokens."""
    model = _model(layers)
    graphdef, lora_params, rest = nnx.split(model, nnx.LoRAParam, ...)
    ids = jnp.arange(64, dtype=jnp.int32)[None] % 100 + 10
    pos = jnp.broadcast_to(jnp.arange(64, dtype=jnp.int32), (3, 1, 64))
    mask = jnp.ones((1, 64), jnp.int32)

    def loss(lp, rest):
        return nnx.merge(graphdef, lp, rest).forward(ids, mask, pos, remat="full").mean()

    fn = jax.grad(loss) if train else loss
    # As tools/bench_3b_cpu.py compiles (CPU_MEMORY_FLAGS): XLA's loop-invariant code motion would
    # hoist a 16-bit copy of the stacked weights out of the layer scan (as out of any loop).
    compiled = jax.jit(fn).lower(lora_params, rest).compile({} if licm else {"xla_disable_hlo_passes": NO_LICM})
    return compiled.memory_analysis().temp_size_in_bytes


NO_LICM = "while-loop-invariant-code-motion,while-loop-expensive-invariant-code-motion"


def test_float32_weight_copies_do_not_grow_with_depth():
    # A decoder layer's weights take 7.3 MB as float32 copies. Before layers.matmul tied each
    # conversion to its use, four more layers added about 4 x 7.3 MB of temporaries to the forward
    # (XLA:CPU converted every weight up front) and 5 x 7.3 MB to the gradient (one conversion
    # shared by the forward, the rematerialised forward and the backward); now ~0 and ~1.2 x.
    four_layers_f32 = 4 * 4 * (3 * 256 * 2048 + 4 * 256 * 256)
    assert _temp_bytes(5, train=False) - _temp_bytes(1, train=False) < four_layers_f32 / 4
    assert _temp_bytes(5, train=True) - _temp_bytes(1, train=True) < four_layers_f32 / 2
    # With XLA's default loop-invariant code motion, a 16-bit copy of the stacked weights leaves the
    # layer loop (half their float32 size); never a float32 copy (XLA:CPU slices bf16 in float32:
    # layers.scan_layers slices their bits instead; 1.2 x without that).
    assert _temp_bytes(5, train=False, licm=True) - _temp_bytes(1, train=False, licm=True) < 0.75 * four_layers_f32
