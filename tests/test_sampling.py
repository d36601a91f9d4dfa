"""The JAX sampler against transformers' generate and forward on a tiny random Qwen2.5-VL with images."""

import jax
import numpy as np
import pytest
import torch
from scipy.special import log_softmax

from data_pipeline.tokenizer import load_tokenizer
from progress_jax import sampling, sharding
from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import family as qwen
from tests import hf_reference as ref

N = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Weights x2 over hf_reference's scale: at scale 1 greedy decoding of the random model repeats
    one token, which would hide position or cache errors."""
    hf = ref.hf_model(tied=True, seed=1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" not in name and "ln_q" not in name:
                p.mul_(2.0)
    path = tmp_path_factory.mktemp("hf_sampling")
    hf.save_pretrained(path)
    return hf, str(path), qwen2_5_vl.from_pretrained(str(path))


def host_batch() -> dict:
    """The two reference samples right-padded (the pipeline's side; the sampler left-pads) plus an
    empty row, as the pipeline pads an incomplete last batch."""
    ids, mask, pv, grid = ref.batch("right")
    ids = np.concatenate([ids, np.zeros_like(ids[:1])])
    mask = np.concatenate([mask, np.zeros_like(mask[:1])])
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pv, "image_grid_thw": grid}


def hf_generate(hf, stops, max_new_tokens=N) -> np.ndarray:
    ids, mask, pv, grid = ref.batch("left")
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), pixel_values=torch.tensor(pv),
            image_grid_thw=torch.tensor(grid), mm_token_type_ids=torch.tensor((ids == ref.IMAGE).astype(np.int64)),
            do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=list(stops), pad_token_id=0,
        )
    return out[:, ids.shape[1]:].numpy()


def hf_teacher_logprobs(hf, gen: sampling.Generation, temperature: float) -> np.ndarray:
    """log_softmax(logits / temperature) of each generated token, from one transformers forward pass
    over prompt + generated tokens (left-padded)."""
    ids, mask, pv, grid = ref.batch("right")
    seqs = [list(ids[b][mask[b] > 0]) + list(gen.tokens[b, : gen.lengths[b]]) for b in range(2)]
    L = max(map(len, seqs))
    full = np.zeros((2, L), np.int64)
    full_mask = np.zeros((2, L), np.int64)
    for b, s in enumerate(seqs):
        full[b, L - len(s):], full_mask[b, L - len(s):] = s, 1
    logits = ref.hf_logits(hf, full, full_mask, pv, grid).astype(np.float64) / temperature
    logp = log_softmax(logits, axis=-1)
    out = np.zeros_like(gen.logprobs, dtype=np.float64)
    for b in range(2):
        n = gen.lengths[b]
        positions = np.arange(L - n - 1, L - 1)  # the logits at position j predict token j + 1
        out[b, :n] = logp[b, positions, full[b, positions + 1]]
    return out


def test_greedy_matches_transformers_and_eos_stops_one_row(models):
    hf, _, model = models
    tok = load_tokenizer(None)
    params = sampling.SamplingParams(max_new_tokens=N, temperature=0.0)
    stops = sampling.stop_ids(model.config, params, tok)
    free = sampling.generate(model, host_batch(), params, jax.random.key(0), tokenizer=tok).tokens
    # Stop row 0 mid-way on a token that row 1 never produces (found on our own run; the expected
    # tokens below come from transformers alone).
    step = next(t for t in range(3, N - 2) if free[0, t] not in free[0, :t] and free[0, t] not in free[1])
    stop = int(free[0, step])
    params = sampling.SamplingParams(max_new_tokens=N, temperature=0.0, stop_token_ids=(stop,))
    expected = hf_generate(hf, (*stops, stop))
    assert len(set(expected[1])) > 4  # not a degenerate repetition
    gen = sampling.generate(model, host_batch(), params, jax.random.key(0), tokenizer=tok)

    assert gen.tokens.shape == (3, N)
    np.testing.assert_array_equal(gen.lengths[:2], [step + 1, N])
    np.testing.assert_array_equal(gen.stopped[:2], [True, False])
    np.testing.assert_array_equal(gen.tokens[0, : step + 1], expected[0, : step + 1])
    np.testing.assert_array_equal(gen.tokens[1], expected[1])
    assert (gen.tokens[0, step + 1:] == tok.pad_id).all() and (gen.logprobs[0, step + 1:] == 0).all()
    assert gen.texts[0] == tok.decode(expected[0, :step], skip_special_tokens=True)
    assert gen.texts[1] == tok.decode(expected[1], skip_special_tokens=True)
    # Greedy log-probs are the raw ones.
    np.testing.assert_allclose(gen.logprobs[:2], hf_teacher_logprobs(hf, gen, 1.0)[:2], atol=1e-4)


@pytest.mark.parametrize("at_temperature", [True, False])
def test_sampling_reproducible_and_logprobs_match_teacher_forcing(models, at_temperature):
    hf, _, model = models
    params = sampling.SamplingParams(max_new_tokens=N, temperature=0.7, top_p=0.9, top_k=40,
                                     logprobs_at_temperature=at_temperature)
    gen = sampling.generate(model, host_batch(), params, jax.random.key(3))
    again = sampling.generate(model, host_batch(), params, jax.random.key(3))
    other = sampling.generate(model, host_batch(), params, jax.random.key(4))
    np.testing.assert_array_equal(gen.tokens, again.tokens)
    assert (gen.tokens != other.tokens).any()
    expected = hf_teacher_logprobs(hf, gen, params.temperature if at_temperature else 1.0)
    assert np.abs(gen.logprobs[:2] - expected[:2]).max() <= 1e-4


def test_top_k_one_is_greedy(models):
    _, _, model = models
    greedy = sampling.generate(model, host_batch(), sampling.SamplingParams(N, temperature=0.0), jax.random.key(0))
    top1 = sampling.generate(model, host_batch(), sampling.SamplingParams(N, temperature=1.3, top_k=1),
                             jax.random.key(5))
    np.testing.assert_array_equal(greedy.tokens, top1.tokens)


def test_sharded_greedy_matches_unsharded(models):
    _, path, model = models
    params = sampling.SamplingParams(max_new_tokens=N, temperature=0.0)
    expected = sampling.generate(model, host_batch(), params, jax.random.key(0))
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    sharded = qwen2_5_vl.from_pretrained(path, mesh=mesh)
    got = sampling.generate(sharded, host_batch(), params, jax.random.key(0), mesh=mesh)
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_allclose(got.logprobs, expected.logprobs, atol=1e-4)


def test_sampling_batches_give_the_tokens_of_one_call(models):
    """GRPO's rollouts in sampling.batch_size slots: each row keeps its own key (its index in the
    whole batch), so the sampled tokens are those of all rows at once, images going with their rows
    (more schedules: tests/test_engine.py)."""
    _, _, model = models
    batch = qwen.take_rows(host_batch(), [0, 1, 1, 0, 1], model.config)  # rows of one prompt differ
    params = sampling.SamplingParams(max_new_tokens=N, temperature=1.0)
    whole = sampling.generate(model, batch, params, jax.random.key(7))
    assert (whole.tokens[1] != whole.tokens[2]).any()  # independent keys per row
    for size in (2,):
        parts = sampling.generate(model, batch, params, jax.random.key(7), batch_size=size)
        np.testing.assert_array_equal(parts.tokens, whole.tokens)
        np.testing.assert_array_equal(parts.lengths, whole.lengths)
        np.testing.assert_allclose(parts.logprobs, whole.logprobs, atol=1e-5)


def test_bad_params_rejected():
    with pytest.raises(ValueError, match="top_p"):
        sampling.SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        sampling.SamplingParams(max_new_tokens=0)
