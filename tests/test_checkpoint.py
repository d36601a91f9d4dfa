"""Checkpointer: exact round trip, save cadence and retention, crash leftovers, sharded restore."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from progress_jax.train.checkpoint import Checkpointer, abstract_like
from progress_jax.train.schedule import make_optimizer


def train_state(seed=0):
    rng = np.random.default_rng(seed)
    params = {"base": {"w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
                       "w16": jnp.asarray(rng.normal(size=(6,)), jnp.bfloat16)},
              "lora": {"a": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
                       "b": jnp.asarray(rng.normal(size=(2, 6)), jnp.float32)}}
    tx = make_optimizer(1e-2, 0.01, 0.0, 10, 1.0)
    opt_state = tx.init(params["lora"])  # moments for the trained leaves only, as the trainers do
    grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params["lora"])
    for _ in range(2):  # non-trivial moments and counts
        _, opt_state = tx.update(grads, opt_state, params["lora"])
    return {"params": params, "opt_state": opt_state, "step": jnp.int32(seed + 5),
            "rng": jax.random.key(seed), "rng_raw": jax.random.PRNGKey(seed + 1)}


def assert_bit_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert y.dtype == x.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_bit_exact_with_json_extras(tmp_path):
    state = train_state()
    data_state = b'{"next_index": 17, "epoch": 1}'  # Grain's DataLoader iterator state is bytes
    metadata = {"config": {"lr": 1e-4, "lora": {"rank": 8}}, "commit": "abc"}
    with Checkpointer(str(tmp_path), save_every=1, keep=3) as ckpt:
        assert ckpt.save(5, state, data_state, metadata)
    with Checkpointer(str(tmp_path), save_every=1, keep=3) as ckpt:
        assert ckpt.latest_step() == 5
        restored, data, meta = ckpt.restore(None, abstract_like(state))
    assert_bit_equal(restored, state)
    assert data == data_state and meta == metadata
    # A dict iterator state (grain's DatasetIterator.get_state()) round-trips too.
    with Checkpointer(str(tmp_path), save_every=1, keep=3) as ckpt:
        ckpt.save(6, state, {"next_index": 3, "blob": b"\x00\xff"})
        assert ckpt.restore(6, abstract_like(state))[1] == {"next_index": 3, "blob": b"\x00\xff"}


def test_save_every_n_keep_k_and_final_save(tmp_path):
    state = train_state()
    with Checkpointer(str(tmp_path), save_every=2, keep=2) as ckpt:
        saved = [s for s in range(1, 8) if ckpt.save(s, state)]
        assert saved == [2, 4, 6]
        assert ckpt.save(7, state, force=True)  # end of run
        assert not ckpt.save(7, state, force=True)  # already on disk: not written twice
        ckpt.wait()
        assert ckpt.all_steps() == [6, 7]
    assert sorted(os.listdir(tmp_path)) == ["6", "7"]


def test_partially_written_checkpoint_is_ignored(tmp_path):
    good, newer = train_state(0), train_state(1)
    with Checkpointer(str(tmp_path), save_every=1, keep=5, async_save=False) as ckpt:
        ckpt.save(2, newer)
        ckpt.save(4, good)
        ckpt.save(6, newer)
    # Simulate a crash while writing step 6: orbax writes into a tmp dir and renames it only
    # when complete, so a killed run leaves `6.orbax-checkpoint-tmp-*` with partial contents.
    tmp = tmp_path / "6.orbax-checkpoint-tmp-1754000000"
    os.rename(tmp_path / "6", tmp)
    (tmp / "commit_success.txt").unlink(missing_ok=True)
    shutil.rmtree(tmp / "extra")
    with Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt:
        assert ckpt.latest_step() == 4
        restored, _, _ = ckpt.restore(None, abstract_like(good))
        assert_bit_equal(restored, good)
        with pytest.raises(FileNotFoundError, match="step 6"):
            ckpt.restore(6, abstract_like(good))
        # The resumed run reaches step 6 again; the leftover is cleaned up before any save.
        assert ckpt.save(6, newer)
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 6]
        assert_bit_equal(ckpt.restore(6, abstract_like(newer))[0], newer)
    assert not tmp.exists()


def test_restore_onto_a_different_sharding(tmp_path):
    devices = np.array(jax.devices()[:8])
    if devices.size < 8:
        pytest.skip("needs 8 (simulated) devices")
    mesh = Mesh(devices.reshape(4, 2), ("data", "model"))
    x = np.arange(8 * 6, dtype=np.float32).reshape(8, 6)
    state = {"w": jax.device_put(x, NamedSharding(mesh, P("data", None))),
             "v": jax.device_put(x[:, :2].copy(), NamedSharding(mesh, P()))}
    with Checkpointer(str(tmp_path), save_every=1, keep=1) as ckpt:
        ckpt.save(1, state)
    targets = {"w": NamedSharding(mesh, P(None, "model")), "v": NamedSharding(mesh, P("data", "model"))}
    abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=targets[k]) for k, v in state.items()}
    with Checkpointer(str(tmp_path), save_every=1, keep=1) as ckpt:
        restored, _, _ = ckpt.restore(1, abstract)
    for k in state:
        assert restored[k].sharding == targets[k]
        np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(state[k]))


def test_restore_without_checkpoints_names_the_directory(tmp_path):
    with Checkpointer(str(tmp_path), save_every=1, keep=1) as ckpt:
        assert ckpt.latest_step() is None
        with pytest.raises(FileNotFoundError, match=str(tmp_path)):
            ckpt.restore(None, {})
