"""tools/gpu_check.py: the --smoke run prints every row with measured numbers (CPU), and the
attention check compares real numbers: the model's XLA path and the masking of the fused call
against a float64 NumPy reference here, cuDNN against it where a GPU is present."""
import contextlib
import importlib.util
import io
import re

import jax
import numpy as np
import pytest

from progress_jax.models import qwen2_5_vl
from progress_jax.models.qwen2_5_vl import family as qwen
from tools import gpu_check

CHECKS = ["LoRA SFT step, 1 x 128 tokens", "LoRA SFT step, 1 x 256 tokens", "rollout, progress_jax engine",
          "rollout, vLLM", "GRPO step", "attention, XLA (chunk 64)", "attention, cuDNN"]


@pytest.fixture(scope="module")
def smoke():
    """(rows, printed text) of one in-process `tools/gpu_check.py --smoke` run."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rows = gpu_check.main(["--smoke", "--peak-tflops", "1"])
    return rows, out.getvalue()


@pytest.mark.heavy
def test_smoke_prints_every_row_with_numbers(smoke):
    rows, text = smoke
    by = {r.check: r for r in rows}
    assert list(by) == CHECKS and not any(r.failed for r in rows)
    assert "Goals: SFT MFU >= 40%" in text and "3600 tokens/s/GPU" in text and "UTC" in text
    for check in CHECKS:
        assert re.search(rf"^\| {re.escape(check)} \|", text, re.M), check

    tiny = qwen2_5_vl.preset("tiny")
    for length in (128, 256):
        r = by[f"LoRA SFT step, 1 x {length} tokens"]
        assert r.seconds > 0 and r.peak_gb > 0
        assert r.tokens_s == pytest.approx(length / r.seconds)
        assert r.mfu == pytest.approx(r.tokens_s * qwen.flops_per_token(tiny, length, True) / 1e12)

    r = by["rollout, progress_jax engine"]
    assert r.tokens_s * r.seconds == pytest.approx(4 * 2 * 8)  # every sample generated its 8 tokens
    assert r.goal == ">= vLLM: no vLLM number"
    if importlib.util.find_spec("vllm") is None:
        assert by["rollout, vLLM"].detail == "vllm not installed"

    r = by["GRPO step"]
    split = [float(x) for x in re.search(r"rollout ([\d.]+) s / log-probs ([\d.]+) s / update ([\d.]+) s",
                                         r.detail).groups()]
    assert r.tokens_s > 0 and all(x > 0 for x in split) and sum(split) <= r.seconds + 0.02

    r = by["attention, XLA (chunk 64)"]
    err = float(re.search(r"max abs\(XLA - float64\) ([\d.e+-]+)", r.detail).group(1))
    assert r.seconds > 0 and err < 1e-5 and r.goal.endswith("met")
    assert by["attention, cuDNN"].detail == "cuDNN path not available on cpu"


def test_attention_paths_match_float64_reference():
    text = qwen2_5_vl.preset("tiny").text
    q, k, v, mask = gpu_check.attention_inputs(text, 64, "float32", seed=1)
    ref = gpu_check.reference_attention(q, k, v, mask)
    assert np.isfinite(ref).all()
    for fn in (gpu_check.model_attention(qwen, 0), gpu_check.model_attention(qwen, 16),
               gpu_check.fused_attention("xla")):
        out = np.asarray(jax.jit(fn)(q, k, v, mask))
        assert gpu_check.max_difference(out, ref, mask) < 1e-5
    # The check sees a real error, and only on real query positions.
    out = np.asarray(gpu_check.model_attention(qwen, 0)(q, k, v, mask)).copy()
    out[0, 5, 1, 3] += 0.25
    assert gpu_check.max_difference(out, ref, mask) == pytest.approx(0.25, abs=1e-5)
    out[0, 5, 1, 3] -= 0.25
    out[1, -1] = 100.0  # a padding query of row 1
    assert gpu_check.max_difference(out, ref, mask) < 1e-5


def test_export_in_a_child_gives_the_same_weights(tmp_path):
    """Where vLLM runs, the weights are exported by a child process: the same weights as in-process."""
    gpu_check._child(f"export_random('tiny', 'float32', {str(tmp_path / 'child')!r})", timeout=600)
    gpu_check.export_random("tiny", "float32", str(tmp_path / "here"))
    child, here = (qwen2_5_vl.to_hf_tensors(qwen2_5_vl.from_pretrained(str(tmp_path / d))) for d in ("child", "here"))
    assert child.keys() == here.keys() and all(np.array_equal(child[k], here[k]) for k in here)
    with pytest.raises(RuntimeError, match=r"(?s)exited 1: .*TypeError"):
        gpu_check._child("export_random('tiny')", timeout=600)


def _has_gpu() -> bool:
    try:
        return jax.devices("gpu") != []
    except RuntimeError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu(), reason="needs a CUDA GPU (CPU twin: test_attention_paths_match_float64_reference)")
def test_cudnn_attention_matches_float64_reference():
    text = qwen2_5_vl.preset("qwen2_5_vl_3b").text
    q, k, v, mask = gpu_check.attention_inputs(text, 512, "bfloat16", seed=1)
    ref = gpu_check.reference_attention(q, k, v, mask)
    out = np.asarray(jax.jit(gpu_check.fused_attention("cudnn"))(q, k, v, mask).astype(np.float32))
    assert gpu_check.max_difference(out, ref, mask) <= gpu_check.ATTENTION_TOLERANCE["bfloat16"]
