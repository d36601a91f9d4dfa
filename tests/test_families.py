"""Model families: the job picks the model code by config.json's model_type through one registry,
and the trainers' batch handling takes its keys from the family. A second, deliberately small
family (text-only, defined here) is one object plus one `register` call."""

import json
import types

import jax
import numpy as np
import pytest

from configs import eval as eval_config
from progress_jax import runtime, sharding
from progress_jax.models import families
from progress_jax.models.qwen2_5_vl import family as qwen
from progress_jax.train import loop


def text_only_family(loaded):
    """A toy family: token ids only, no images."""
    return types.SimpleNamespace(
        MODEL_TYPE="toy_text", PRESETS=(), BATCH_AXIS={"input_ids": 1, "attention_mask": 1, "position_ids": 1},
        PATCH_KEYS=(), load=lambda path, dtype, compute_dtype, mesh=None: loaded.setdefault("model", ("toy", path)),
        init=None)


def test_model_type_picks_the_family(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "toy_text"}))
    c = eval_config.get_config()
    c.model.path = str(ckpt)
    with pytest.raises(ValueError, match=r"no model family for model_type 'toy_text'; known: \['qwen2_5_vl'\]"):
        runtime.load_model(c)
    loaded = {}
    monkeypatch.setitem(families.FAMILIES, "toy_text", text_only_family(loaded))
    assert runtime.load_model(c) == ("toy", str(ckpt))
    c.model.path = ""
    assert families.for_config(c) is qwen  # the tiny preset belongs to Qwen2.5-VL
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    c.model.path = str(ckpt)
    with pytest.raises(ValueError, match="config.json has no model_type"):
        families.for_config(c)


def test_batch_shardings_take_the_keys_from_the_family():
    mesh = sharding.make_mesh(4, 1, 1, devices=jax.devices()[:4])
    toy = text_only_family({})
    batch = {"input_ids": np.zeros((2, 8, 16), np.int32), "attention_mask": np.ones((2, 8, 16), np.int32),
             "position_ids": np.zeros((2, 8, 16), np.int32), "loss_mask": np.zeros((2, 8, 16), np.int32)}
    sh = loop.batch_shardings(batch, mesh, toy)
    dev = loop.to_device(batch, sh, toy)
    for k in batch:  # rows (axis 1, after the micro-batch axis) split over the 4 data devices
        assert dev[k].sharding.spec[1] is not None and dev[k].addressable_shards[0].data.shape == (2, 2, 16)
    with pytest.raises(KeyError, match="pixel_values"):  # not an input of this family
        loop.batch_shardings({**batch, "pixel_values": np.zeros((2, 64, 4), np.float32)}, mesh, toy)
