"""Model families: the job picks the model code by config.json's model_type through one registry,
and the trainers' batch handling and the sampler take their inputs from the family. A second,
deliberately small family (text-only, defined here) is one object plus one `register` call."""

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import eval as eval_config
from progress_jax import loading, sampling, sharding
from progress_jax.models import qwen2_5_vl
from progress_jax.models import families
from progress_jax.models.qwen2_5_vl import family as qwen
from progress_jax.train import loop


def text_only_family(loaded=None):
    """A toy family: token ids only, no images. A module object (what a family is; hashable, as the
    sampler's compiled program takes the family as a static argument). Its generation inputs drive
    the tiny Qwen2.5-VL decoder as a text-only model: positions 0, 1, ... of the real tokens on all
    three rotary axes, decode positions continuing them; no rope deltas, no patches."""
    def generation_inputs(prompts, config, shards=1, patch_bucket=None):
        mask = np.asarray(prompts["attention_mask"]).astype(np.int32)
        pos = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
        return {"input_ids": np.asarray(prompts["input_ids"]).astype(np.int32), "attention_mask": mask,
                "position_ids": np.broadcast_to(pos, (3, *pos.shape)).copy()}

    def decode_position_ids(inputs, step):
        pos = inputs["attention_mask"].sum(1) + step
        return jnp.broadcast_to(pos[None, :, None], (3, pos.shape[0], 1))

    def unused(*args, **kwargs):
        raise NotImplementedError("not used by these tests")

    family = types.ModuleType("toy_text")
    family.__dict__.update(
        MODEL_TYPE="toy_text", PRESETS=(), BATCH_AXIS={"input_ids": 1, "attention_mask": 1, "position_ids": 1},
        PATCH_KEYS=(), PARTITION_RULES=qwen.PARTITION_RULES,
        architecture=unused, build=unused, save_pretrained=unused, stack_micro=unused, flops_per_token=unused,
        row_images=unused, vision_token_ids=unused, save_orbax=unused, load_orbax=unused, causal_attention=unused,
        load=lambda path, dtype, compute_dtype, mesh=None: loaded.setdefault("model", ("toy", path)),
        GENERATION_AXIS={"input_ids": 0, "attention_mask": 0, "position_ids": 1},
        generation_inputs=generation_inputs, decode_position_ids=decode_position_ids,
        prompt_embeddings=lambda model, inputs: model.embed(inputs["input_ids"]),
        take_rows=lambda batch, rows, config: {k: np.asarray(batch[k])[np.asarray(rows)]
                                               for k in ("input_ids", "attention_mask")})
    return family


def test_model_type_picks_the_family(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "toy_text"}))
    c = eval_config.get_config()
    c.model.path = str(ckpt)
    with pytest.raises(ValueError, match=r"no model family for model_type 'toy_text'; known: \['qwen2_5_vl'\]"):
        loading.load_model(c)
    loaded = {}
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))
    families.register("toy_text", text_only_family(loaded))
    assert loading.load_model(c) == ("toy", str(ckpt))
    c.model.path = ""
    assert families.for_config(c) is qwen  # the tiny preset belongs to Qwen2.5-VL
    (ckpt / "config.json").write_text(json.dumps({"architectures": ["X"]}))
    c.model.path = str(ckpt)
    with pytest.raises(ValueError, match="config.json has no model_type"):
        families.for_config(c)


def test_a_family_is_checked_when_it_registers(monkeypatch):
    monkeypatch.setattr(families, "FAMILIES", dict(families.FAMILIES))
    toy = text_only_family()
    del toy.take_rows
    toy.build = None
    with pytest.raises(TypeError, match=r"'toy_text' is not a Family .*missing take_rows; not callable: build"):
        families.register("toy_text", toy)
    assert "toy_text" not in families.FAMILIES
    assert families.get("qwen2_5_vl") is qwen  # the built-in entry, checked on first use


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


def test_the_sampler_takes_its_inputs_from_the_family():
    """The toy family's generation inputs (no rope deltas, no patches) on the tiny Qwen2.5-VL: for
    text prompts they are Qwen2.5-VL's, so the sampled tokens are those of the model's own family,
    split over 4 devices; the sampler finds a model's family by its config's model_type."""
    tiny = qwen2_5_vl.tiny()
    model = qwen2_5_vl.init(dataclasses.replace(tiny, text=dataclasses.replace(tiny.text, num_hidden_layers=1)), seed=0)
    assert families.for_model(model.config) is qwen
    rng = np.random.default_rng(0)
    ids = rng.integers(10, 200, (3, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 8:] = 0  # right padding, as the pipeline pads
    batch = {"input_ids": ids, "attention_mask": mask}
    params = sampling.SamplingParams(max_new_tokens=4, temperature=1.0)
    expected = sampling.generate(model, batch, params, jax.random.key(1))
    toy = text_only_family()
    assert "rope_deltas" not in sampling.prefill_inputs(batch, range(3), model.config, 0, 1, toy)
    mesh = sharding.make_mesh(4, 1, 1, devices=jax.devices()[:4])
    got = sampling.generate(model, batch, params, jax.random.key(1), family=toy, mesh=mesh, batch_size=2)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-5)
