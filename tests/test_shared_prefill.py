"""n samples per prompt from one prefill (`sampling.generate(..., n=n)`, GRPO's rollout): the tokens,
log-probs, lengths and stops of generating from the batch with every row repeated n times (GRPO's
rollout before), greedy and sampled, in sampling batches, on one device and on 8."""

import jax
import numpy as np
from flax import nnx

from progress_jax import sampling, sharding
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import family as qwen
from tests.test_sampling_vision import prompts
from tests.test_vision_sharding import CFG

# Stops on about one token in eight of the 256, so that rows end at different lengths.
GREEDY = sampling.SamplingParams(max_new_tokens=6, temperature=0.0, stop_token_ids=tuple(range(10, 42)))
SAMPLED = sampling.SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, top_k=50,
                                  stop_token_ids=tuple(range(10, 42)))
# Rows with 1, 0, 2 and 1 images of different sizes; the fifth prompt only on the mesh.
GRIDS = [[(1, 8, 8)], [], [(1, 8, 8), (1, 4, 8)], [(1, 4, 4)], [(1, 8, 4)]]


def repeated(batch, n):
    """GRPO's rollout batch before shared prefill: each row n times, its images with it."""
    return qwen.take_rows(batch, np.repeat(np.arange(len(batch["input_ids"])), n), CFG)


def assert_same(got, expected):
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_array_equal(got.lengths, expected.lengths)
    np.testing.assert_array_equal(got.stopped, expected.stopped)
    np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-5)


def check(model, batch, n, batch_size, mesh=None, modes=(GREEDY, SAMPLED)):
    for params in modes:
        expected = sampling.generate(model, repeated(batch, n), params, jax.random.key(2), mesh=mesh)
        assert len(expected.tokens) == len(batch["input_ids"]) * n
        for size in (None, batch_size):
            assert_same(sampling.generate(model, batch, params, jax.random.key(2), mesh=mesh, batch_size=size, n=n),
                        expected)
    # Sampled: a prompt's rows draw different tokens, and some rows stop early, others do not.
    assert (expected.tokens[0] != expected.tokens[1]).any()
    assert expected.stopped.any() and not expected.stopped.all()


def test_one_device(n=3):
    # batch_size 2n: two prompts per call.
    check(qwen2_5_vl.init(CFG, seed=0), prompts(GRIDS[:4]), n, 2 * n)


def test_eight_devices(n=2):
    """8 batch shards: 5 prompts pad to 8 rows, one per device, and decode on 8n rows (each row's
    copies on its device); in calls of 2 prompts (batch_size 2n) the 8 prompt rows hold 2 prompts
    and the 2n decode rows pad to 8, so a prompt's copies move to other devices."""
    mesh = sharding.make_mesh(data=2, fsdp=4, tensor=1)
    model = qwen2_5_vl.init(CFG, seed=0)
    graphdef, state = nnx.split(model)
    sharded = nnx.merge(graphdef, jax.device_put(state, sharding.param_shardings(state, mesh, model.partition_rules)))
    check(sharded, prompts(GRIDS), n, 2 * n, mesh, modes=(SAMPLED,))  # greedy: the same rows, the argmax


def test_prefill_groups():
    """A prefill group: its prompts right-padded to their length bucket, in a power of two of rows
    that the batch shards divide (the padding rows one token each); the patches per batch shard."""
    batch = prompts(GRIDS[:3])
    one = sampling.prefill_inputs(batch, [2, 0, 1], CFG, 0, 1, qwen)
    assert one["input_ids"].shape == (4, 128)
    np.testing.assert_array_equal(one["attention_mask"].sum(1)[:3], batch["attention_mask"].sum(1)[[2, 0, 1]])
    assert one["attention_mask"][:3, 0].all() and one["attention_mask"][3].sum() == 1
    eight = sampling.prefill_inputs(batch, [1, 2], CFG, 0, 8, qwen)
    assert eight["input_ids"].shape[0] == 8 and eight["pixel_values"].shape[0] == 8


def test_grpo_rollout_is_the_repeated_rows_rollout():
    """GRPO's rollout (Step.rollout: n samples of each real prompt row, the spec's `rollout`
    program) gives the rollouts, texts, records and training rows of the rollout before (every
    real row repeated n times, then generate), so the GRPO numbers do not change."""
    from data_pipeline.tokenizer import load_tokenizer
    from progress_jax import jobs
    from progress_jax.train import grpo, rollouts
    from tests import test_grpo, test_sft

    cfg = test_grpo._config()  # n = 4, temperature 1, 8 new tokens
    cfg.lora.rank, cfg.sampling.batch_size = 0, 12
    model = qwen2_5_vl.init(test_sft.CFG, seed=0)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    step = grpo.Step(jobs.grpo_spec(cfg, mesh, model=model), load_tokenizer(None), reward_fn=lambda gen, records: [])
    assert step.spec.programs["rollout"].n == 4
    prompts = test_sft.host_batch([(20, 1), (12, 2), (6, 0), (16, 1)], seed=5)
    prompts["attention_mask"][2] = 0  # a padding row of an incomplete batch
    prompts["records"] = ["p0", "p1", None, "p3"]
    key = jax.random.key(4)
    params = step.spec.setup.state["params"]
    gen, real = step.rollout(params, prompts, key)
    before = rollouts.repeat_rows(prompts, 4, qwen, model.config)
    expected = sampling.generate(step.spec.policy(params), before, step.spec.sampling, key, tokenizer=step.tokenizer,
                                 mesh=mesh, batch_size=12)
    assert step.records(real) == before["records"] == ["p0"] * 4 + ["p1"] * 4 + ["p3"] * 4
    assert_same(gen, expected)
    assert gen.texts == expected.texts
    # The training rows from the real rows (each once per rollout) are those of the repeated batch.
    adv = np.arange(12, dtype=np.float32)
    got = rollouts.rollout_sequences(real, gen, qwen, model.config, 4, adv)
    want = rollouts.rollout_sequences(before, gen, qwen, model.config, 1, adv)
    assert len(got) == len(want) == 12
    for a, b in zip(got, want):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
