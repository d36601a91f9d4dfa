"""Image patches split over the data axes with their rows: on 8 devices each device runs the vision
tower on its own rows' images only (compiled FLOPs per device about 1/8 of one device's, vision
included), and the sharded step gives the loss and gradients of the one-device step."""

import dataclasses

import jax
import numpy as np
import pytest

from data_pipeline.pipeline import _Collate
from progress_jax import sharding
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import family as qwen
from progress_jax.train import loop, programs, schedule

_T = qwen2_5_vl.tiny()
# A wide vision tower and a one-layer, small-vocabulary decoder: the vision tower is most of the
# step's FLOPs, so a replicated tower would leave each of 8 devices most of the one-device work.
CFG = dataclasses.replace(
    _T, text=dataclasses.replace(_T.text, num_hidden_layers=1, vocab_size=256),
    vision=dataclasses.replace(_T.vision, depth=4, hidden_size=128, intermediate_size=512, fullatt_block_indexes=(1, 3)))
ROWS = 8


def samples(grids_per_row, seed=0):
    """Pipeline samples (what _Collate takes): a few text tokens, then each image's tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for r, grids in enumerate(grids_per_row):
        ids = list(rng.integers(10, CFG.text.vocab_size, 5))
        for t, h, w in grids:
            ids += [CFG.vision_start_token_id] + [CFG.image_token_id] * (t * h * w // 4) + [CFG.vision_end_token_id]
        ids += list(rng.integers(10, CFG.text.vocab_size, 6))
        n = sum(t * h * w for t, h, w in grids)
        out.append({"input_ids": np.array(ids, np.int32),
                    "loss_mask": np.r_[np.zeros(len(ids) - 6, np.int32), np.ones(6, np.int32)],
                    "pixel_values": rng.standard_normal((n, 1176)).astype(np.float32),
                    "image_grid_thw": np.array(grids, np.int32).reshape(-1, 3), "key": str(r), "record": None})
    return out


def device_batch(grids_per_row, mesh):
    shards = sharding.batch_shards(mesh)
    host = _Collate(ROWS, (128, 384), (1024, 2048, 4096), (16,), CFG.pad_token_id, batch_shards=shards)(
        samples(grids_per_row))
    batch = qwen.stack_micro([host], CFG, shards)
    # The pipeline's per-shard bucket holds every shard's patches: [shards, P / shards, 1176].
    assert batch["pixel_values"].shape[1:3] == (shards, host["pixel_values"].shape[0] // shards)
    return batch


def compiled_step(mesh, batch):
    model = qwen2_5_vl.init(CFG, seed=0)
    tx = schedule.make_optimizer(1e-3, 0.0, 0.0, 10, None, eps=1e-4)
    # Full training, vision tower included: its gradients are compared too.
    setup = loop.setup_state(model, mesh, tx, rank=0, freeze_vision=False)
    batch_sh = loop.batch_shardings(batch, mesh, qwen)
    if mesh.size > 1:  # patches and vision indices split over the data axes on their shard axis
        for leaf in [batch_sh["pixel_values"], *batch_sh["vision"].values()]:
            assert leaf.spec[1] == sharding.BATCH

    def grads_step(state, frozen, b):
        loss, grads, _ = programs.loss_and_grads(setup.parts, state["params"], frozen, b, mesh=mesh)
        return state, {"loss": loss, "grads": grads}

    fn = jax.jit(grads_step, in_shardings=(setup.state_sh, setup.frozen_sh, batch_sh))
    dev = loop.to_device(batch, batch_sh, qwen)
    frozen = jax.device_put(setup.parts.frozen, setup.frozen_sh)
    compiled = fn.lower(setup.state, frozen, dev).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    _, out = compiled(setup.state, frozen, dev)
    return cost["flops"], jax.device_get(out)


@pytest.fixture(scope="module")
def meshes():
    assert len(jax.devices()) == 8
    return sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]), sharding.make_mesh(data=2, fsdp=4, tensor=1)


def test_vision_tower_flops_split_over_eight_devices(meshes):
    one, eight = meshes
    grids = [[(1, 16, 16)]] * ROWS  # one 256-patch image per row: equal shards, no padding
    f1, _ = compiled_step(one, device_batch(grids, one))
    f8, _ = compiled_step(eight, device_batch(grids, eight))
    # Replicated patches would leave each device the whole tower (most of f1); split, about 1/8.
    assert 0.08 < f8 / f1 < 0.17, (f1, f8)


def test_sharded_vision_gives_the_one_device_loss_and_gradients(meshes):
    one, eight = meshes
    # Uneven shards: rows with 0, 1 and 2 images of different sizes, padding within shards.
    grids = [[(1, 16, 16)], [], [(1, 8, 8), (1, 8, 12)], [(1, 4, 8)], [(1, 12, 16)], [(1, 8, 8)],
             [(1, 16, 8), (1, 4, 4)], []]
    _, a = compiled_step(one, device_batch(grids, one))
    _, b = compiled_step(eight, device_batch(grids, eight))
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
    assert any("visual" in k for k in a["grads"])
    for k in a["grads"]:
        scale = np.abs(a["grads"][k]).max()
        assert scale > 0, k
        np.testing.assert_allclose(b["grads"][k], a["grads"][k], atol=1e-5 * scale + 1e-8, rtol=1e-4, err_msg=k)


def test_patch_bucket_is_chosen_per_batch_shard():
    def patches(grids, shards):
        host = _Collate(ROWS, (128, 384), (1024, 2048, 4096), (16,), CFG.pad_token_id, batch_shards=shards)(
            samples(grids))
        return host["pixel_values"].shape[0]

    even = [[(1, 16, 16)]] * ROWS  # 2048 patches, 256 per row
    assert (patches(even, 1), patches(even, 4), patches(even, 8)) == (2048, 2048, 2048)
    # One row holds every image: its shard takes a whole bucket (1024: no more per device than
    # the unsharded batch's bucket); the others are padding.
    uneven = [[(1, 16, 16)] * 3] + [[]] * (ROWS - 1)
    assert (patches(uneven, 1), patches(uneven, 8)) == (1024, 8 * 1024)
    with pytest.raises(ValueError, match="batch needs 256 patches of one batch shard, more than the largest bucket 128"):
        _Collate(ROWS, (128,), (128,), (16,), 0, batch_shards=8)(samples([[(1, 16, 16)]] + [[]] * (ROWS - 1)))
    with pytest.raises(ValueError, match="batch_size 8 does not split into 3 batch shards"):
        _Collate(ROWS, (128,), (1024,), (16,), 0, batch_shards=3)


@pytest.mark.parametrize("shards", [1, 2])
def test_one_image_bucket_gives_one_shape(shards):
    """Batches in one image bucket with 9 and 24 images stack to the same arrays' shapes (the
    attention groups hold the bucket's images), so a run compiles one program per bucket."""
    def shapes(images_per_row):
        host = _Collate(ROWS, (384,), (2048,), (32,), CFG.pad_token_id, batch_shards=shards)(
            samples([[(1, 4, 4)] * n for n in images_per_row]))
        return jax.tree.map(np.shape, qwen.stack_micro([host], CFG, shards))

    few, many = shapes([2, 1, 1, 1, 1, 1, 1, 1]), shapes([3] * ROWS)
    assert few == many
    assert few["vision"]["image_groups"][-2] >= 32 // shards
