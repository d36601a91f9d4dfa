"""tools/convert_checkpoint.py: Hub -> Orbax -> Hub is bit-exact, and transformers loads the result."""

import subprocess
import sys

import numpy as np
import torch

from progress_jax.models import safetensors_io
from tests import hf_reference as ref


def _tensors(path):
    return safetensors_io.open_checkpoint(str(path))


def test_round_trip_bit_exact(tmp_path):
    hf = ref.hf_model(tied=False, seed=3)
    hub = tmp_path / "hub"
    hf.save_pretrained(hub)
    # bfloat16 on disk, as the published checkpoints are: the round trip must keep it exactly.
    ref.hf_model(tied=False, seed=3).to(torch.bfloat16).save_pretrained(tmp_path / "hub_bf16")
    for src in (hub, tmp_path / "hub_bf16"):
        orbax, back = tmp_path / (src.name + "_orbax"), tmp_path / (src.name + "_back")
        for direction, a, b in (("hub-to-orbax", src, orbax), ("orbax-to-hub", orbax, back)):
            subprocess.run(
                [sys.executable, "tools/convert_checkpoint.py", direction, "--src", str(a), "--dst", str(b)],
                check=True, capture_output=True,
            )
        before, after = _tensors(src), _tensors(back)
        assert set(before) == set(after)
        for k in before:
            assert before[k].dtype == after[k].dtype
            np.testing.assert_array_equal(before[k].view(np.uint8), after[k].view(np.uint8))

    from transformers import Qwen2_5_VLForConditionalGeneration

    reloaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "hub_back").eval()
    ids, mask, pv, grid = ref.batch()
    real = mask.astype(bool)
    np.testing.assert_array_equal(
        ref.hf_logits(reloaded, ids, mask, pv, grid)[real], ref.hf_logits(hf, ids, mask, pv, grid)[real]
    )
