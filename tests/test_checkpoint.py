"""Checkpointer: exact round trip, save cadence and retention, crash leftovers, sharded restore."""
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from progress_jax.train.checkpoint import CheckpointDamaged, CheckpointMismatch, Checkpointer, abstract_like
from progress_jax.train.schedule import make_optimizer

# The damage tests abort restores mid-read: the reads left in flight report "Event loop is closed"
# through sys.unraisablehook, which pytest owns during a test (the Checkpointer drops them otherwise).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


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


def big_state(seed):
    """train_state plus one 64 KiB array: its chunk is by far the largest data file of a step (the
    others are small b-tree nodes, some of them unreferenced leftovers that are safe to lose)."""
    rng = np.random.default_rng(seed)
    return {**train_state(seed), "big": jnp.asarray(rng.normal(size=(128, 128)), jnp.float32)}


def _array_data_file(step_dir):
    """The data file (OCDBT: state/**/d/<hash>) that holds the big array."""
    return max((p for p in step_dir.glob("state/**/d/*") if p.is_file()), key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["missing", "truncated", "flipped"])
def test_damaged_latest_checkpoint_is_named_moved_aside_and_the_previous_one_used(tmp_path, damage, caplog):
    old, new = big_state(0), big_state(1)
    with Checkpointer(str(tmp_path), save_every=1, keep=5, async_save=False) as ckpt:
        ckpt.save(2, old, b"two")
        ckpt.save(4, new, b"four")
    victim = _array_data_file(tmp_path / "4")
    assert victim.stat().st_size > 60000
    if damage == "missing":
        victim.unlink()
    elif damage == "truncated":
        with open(victim, "r+b") as f:
            f.truncate(victim.stat().st_size // 2)
    else:  # 64 bytes flipped inside the array data, the size unchanged: no read error, other numbers
        with open(victim, "r+b") as f:
            f.seek(victim.stat().st_size // 2)
            chunk = f.read(64)
            f.seek(-64, os.SEEK_CUR)
            f.write(bytes(b ^ 0xFF for b in chunk))
    with Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt:
        # TensorStore names the data file, or the array it could not read from the step's database.
        named = f"checkpoint step 4 is damaged: {tmp_path / '4' / 'state'}/"
        with pytest.raises(CheckpointDamaged, match=re.escape(named)) as e:
            ckpt.restore(4, abstract_like(old))  # an explicit step: named, not moved
        assert victim.name in str(e.value) or "(array big" in str(e.value)
        assert (tmp_path / "4").exists()
        with caplog.at_level("WARNING"):
            step, restored, data, _ = ckpt.restore_latest(abstract_like(old))
        assert step == 2 and data == b"two"
        assert_bit_equal(restored, old)
        assert ckpt.all_steps() == [2]
    assert named in caplog.text and "4.damaged" in caplog.text
    assert (tmp_path / "4.damaged" / victim.relative_to(tmp_path / "4")).exists() or damage == "missing"
    assert sorted(os.listdir(tmp_path)) == ["2", "4.damaged"]


def test_late_reports_of_the_aborted_reads_are_dropped_and_others_kept(tmp_path):
    """After a damaged read, the reads left in flight report later (asyncio's "Task exception was never
    retrieved", collected at any time, even after the job's one-line error): those that name the damaged
    step are dropped; the same report about another path is kept."""
    import logging

    with Checkpointer(str(tmp_path), save_every=1, keep=5, async_save=False) as ckpt:
        ckpt.save(4, big_state(1), b"four")
    _array_data_file(tmp_path / "4").unlink()
    with Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt, pytest.raises(CheckpointDamaged):
        ckpt.restore(4, abstract_like(big_state(1)))

    def report(path):
        error = ValueError(f'NOT_FOUND: Error reading "x" in OCDBT database at local file "{path}/d/1"')
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception was never retrieved\n"
                                 f"future: <Task finished coro=<read()> exception={error!r}>", None, None)

    asyncio_filters = logging.getLogger("asyncio").filters
    assert not all(f.filter(report(tmp_path / "4" / "state")) for f in asyncio_filters)
    assert all(f.filter(report(tmp_path / "elsewhere")) for f in asyncio_filters)

    # A report collected while the failed read is still unwinding, before the Checkpointer sees its
    # error, is dropped too (the order that once let a traceback through a job's one-line error).
    shutil.copytree(tmp_path / "4", tmp_path / "6")
    kept_during_read = []
    with Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt:
        real_restore = ckpt._manager.restore

        def restore(step, args):
            kept_during_read.append(all(f.filter(report(tmp_path / "6" / "state")) for f in asyncio_filters))
            return real_restore(step, args)

        ckpt._manager.restore = restore
        with pytest.raises(CheckpointDamaged):
            ckpt.restore(6, abstract_like(big_state(1)))
    assert kept_during_read and not any(kept_during_read)


def test_no_intact_checkpoint_stops_and_moves_nothing(tmp_path):
    state = big_state(0)
    with Checkpointer(str(tmp_path), save_every=1, keep=5, async_save=False) as ckpt:
        ckpt.save(2, state)
        ckpt.save(4, state)
    for step in (2, 4):
        _array_data_file(tmp_path / str(step)).unlink()
    with Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt:
        with pytest.raises(CheckpointDamaged, match=f"no intact checkpoint in {tmp_path}: step 4: .* step 2: "):
            ckpt.restore_latest(abstract_like(state))
    assert sorted(os.listdir(tmp_path)) == ["2", "4"]


def test_a_changed_run_config_is_refused_with_keys_values_and_the_way_out(tmp_path):
    state = train_state(0)
    config = {"lora.rank": 8, "model.param_dtype": "float32", "lora.targets": "q_proj"}
    with Checkpointer(str(tmp_path), save_every=1, keep=2, run_config=config) as ckpt:
        ckpt.save(1, state)
    with Checkpointer(str(tmp_path), save_every=1, keep=2, run_config={**config, "lora.rank": 16}) as ckpt:
        with pytest.raises(CheckpointMismatch, match=r"lora.rank: 8 in the checkpoint, 16 now\. To go on: .*"
                                                     r"new workdir .*train.init_params="):
            ckpt.restore_latest(abstract_like(state))
        assert ckpt.all_steps() == [1]  # refused, not moved aside
    with Checkpointer(str(tmp_path), save_every=1, keep=2, run_config=config) as ckpt:
        assert ckpt.restore_latest(abstract_like(state))[0] == 1


def test_a_state_of_another_dtype_or_shape_is_refused_naming_the_arrays(tmp_path):
    state = train_state(0)
    with Checkpointer(str(tmp_path), save_every=1, keep=2) as ckpt:
        ckpt.save(1, state)
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16) if x.dtype == jnp.float32 else x, state)
    rank4 = {**state, "params": {**state["params"], "lora": {"a": jnp.zeros((4, 4)), "b": jnp.zeros((4, 6))}}}
    with Checkpointer(str(tmp_path), save_every=1, keep=2) as ckpt:
        # Orbax alone restores a float32 checkpoint into bfloat16 silently.
        with pytest.raises(CheckpointMismatch, match=r"params/base/w: float32\[4, 6\] in the checkpoint, "
                                                     r"bfloat16\[4, 6\] now"):
            ckpt.restore(1, abstract_like(bf16))
        with pytest.raises(CheckpointMismatch, match=r"params/lora/a: float32\[4, 2\] in the checkpoint, "
                                                     r"float32\[4, 4\] now"):
            ckpt.restore(1, abstract_like({**rank4, "opt_state": state["opt_state"]}))


def test_run_config_of_the_job_configs():
    from configs import grpo, sft
    from progress_jax.train.checkpoint import run_config

    c = sft.get_config()
    with c.unlocked():
        c.lora.rank = 8  # resolved by the job (placeholder None: chosen from model.path)
    got = run_config(c)
    assert got["lora.rank"] == c.lora.rank and got["model.param_dtype"] == c.model.param_dtype
    assert got["lora.targets"] == c.lora.targets and "grpo.n" not in got
    assert run_config(grpo.get_config())["grpo.n"] == grpo.get_config().grpo.n
    with c.unlocked():
        c.model.path = "some/model"
    with_path = run_config(c)
    with c.unlocked():
        c.model.path = "./some/../some/model"
    assert run_config(c) == with_path and with_path["model.path"] == os.path.realpath("some/model")
    with c.unlocked():
        c.model.param_dtype = "bfloat16"
    assert run_config(c) != with_path


def test_restore_or_keep_resumes_from_the_newest_intact_checkpoint(tmp_path):
    from progress_jax.train.loop import restore_or_keep

    class Iterator:
        def set_state(self, s):
            self.state = s

    old, new = big_state(0), big_state(1)
    with Checkpointer(str(tmp_path), save_every=1, keep=5, async_save=False) as ckpt:
        ckpt.save(2, old, b"two")
        ckpt.save(4, new, b"four")
    _array_data_file(tmp_path / "4").unlink()
    it = Iterator()
    with Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt:
        restored, start = restore_or_keep(ckpt, new, it)
    assert start == 2 and it.state == b"two"
    assert_bit_equal(restored, old)


def test_a_damaged_trainable_file_is_refused(tmp_path):
    """final/trainable.safetensors with bytes flipped (size unchanged) is not loaded as trained weights."""
    from progress_jax import handover

    params = {"layers/q/lora_a": np.random.default_rng(0).normal(size=(2, 64, 4)).astype(np.float32)}
    handover.save_trainable(str(tmp_path), params, {"lora": {"rank": 4}})
    loaded, meta = handover.load_trainable(str(tmp_path))
    np.testing.assert_array_equal(loaded["layers/q/lora_a"], params["layers/q/lora_a"])
    path = tmp_path / handover.TRAINABLE_FILE
    data = bytearray(path.read_bytes())
    data[-100:-36] = bytes(b ^ 0xFF for b in data[-100:-36])
    path.write_bytes(bytes(data))
    with pytest.raises(handover.TrainableDamaged, match=re.escape(f"{path} is damaged: its sha256")):
        handover.load_trainable(str(tmp_path))


@pytest.mark.parametrize("text", ['{"lora": ', "[1, 2]"])
def test_a_malformed_trainable_json_names_the_file(tmp_path, text):
    from progress_jax import handover
    from progress_jax.errors import UserError

    (tmp_path / handover.TRAINABLE_META).write_text(text)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / handover.TRAINABLE_META}: ")):
        handover.read_meta(str(tmp_path))


def test_a_final_carries_what_the_run_started_from_and_did_not_train(tmp_path):
    """A run from train.init_params that trains part of the model (a vision tower trained before,
    frozen now) writes a final/ that loads to the model it trained: the init's tower, its own
    language model; the run's values win where both hold a parameter."""
    from configs import sft
    from flax import nnx

    from progress_jax import handover, loading
    from progress_jax.sharding import path_str

    def params_of(model):
        return {path_str(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}

    cfg = sft.get_config()
    rng = np.random.default_rng(0)
    flat = params_of(loading.load_policy(cfg, None, ""))
    tower = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in flat.items() if k.startswith("visual/merger/")}
    lm = {k: rng.normal(size=v.shape).astype(v.dtype) for k, v in flat.items() if k.startswith("layers/self_attn/q_proj")}
    handover.save_trainable(str(tmp_path / "init"), {**tower, **lm}, handover.run_meta(cfg, 5))
    with cfg.unlocked():
        cfg.train.init_params = str(tmp_path / "init")
    mine = {k: v + 1 for k, v in lm.items()}
    handover.save_final(str(tmp_path / "final"), mine, cfg, 7)

    saved, meta = handover.load_trainable(str(tmp_path / "final"))
    assert set(saved) == set(tower) | set(mine) and meta["steps"] == 7
    got = params_of(loading.load_policy(cfg, None, str(tmp_path / "final")))
    for k, v in {**tower, **mine}.items():
        np.testing.assert_array_equal(got[k], v)
    with cfg.unlocked():
        cfg.train.init_params = ""
    handover.save_final(str(tmp_path / "alone"), mine, cfg, 7)
    assert set(handover.load_trainable(str(tmp_path / "alone"))[0]) == set(mine)


def test_trained_weights_load_on_the_preset_and_seed_they_were_trained_on(tmp_path):
    """eval.trained of a nano run, evaluated with a config of the tiny preset and another seed, is
    scored on the nano model of the run's seed; a training job started from it on another preset
    gets a one-line error naming the preset to set, not a shape mismatch."""
    from configs import eval as eval_config
    from configs import sft

    from progress_jax import handover, jobs, loading
    from progress_jax.errors import UserError

    cfg = sft.get_config("nano")
    with cfg.unlocked():
        cfg.seed = 3
    handover.save_trainable(str(tmp_path), {}, handover.run_meta(cfg, 1))
    ev = eval_config.get_config()
    assert ev.model.preset == "tiny" and ev.seed != 3
    resolved = jobs.trained_config(ev, str(tmp_path))
    assert (resolved.model.preset, resolved.seed) == ("nano", 3)
    tiny = sft.get_config()
    with pytest.raises(UserError, match=re.escape("nano preset, but model.preset is tiny: set --config.model.preset=nano")):
        loading.load_policy(tiny, None, str(tmp_path))
