"""tools/convert_checkpoint.py: Hub -> Orbax -> Hub is bit-exact, and transformers loads the result."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
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


def _two_models(tmp_path):
    """Model A as Orbax, and model B as sharded Hub weights (index + 2+ shards) in `dst`."""
    from tools import convert_checkpoint

    ref.hf_model(tied=False, seed=3).save_pretrained(tmp_path / "a_hub")
    convert_checkpoint.main(["hub-to-orbax", "--src", str(tmp_path / "a_hub"), "--dst", str(tmp_path / "a_orbax")])
    dst = tmp_path / "dst"
    ref.hf_model(tied=False, seed=4).save_pretrained(dst, max_shard_size="100KB")
    shards = sorted(p.name for p in dst.glob("*.safetensors"))
    assert len(shards) > 1 and (dst / "model.safetensors.index.json").exists()
    return tmp_path / "a_orbax", dst, shards


def test_orbax_to_hub_into_a_directory_with_weights_needs_overwrite_and_clears_them(tmp_path):
    from tools import convert_checkpoint

    src, dst, shards = _two_models(tmp_path)
    before = sorted(p.name for p in dst.iterdir())
    with pytest.raises(SystemExit, match=f"{dst} already holds weights .*{shards[0]}.*--overwrite"):
        convert_checkpoint.main(["orbax-to-hub", "--src", str(src), "--dst", str(dst)])
    assert sorted(p.name for p in dst.iterdir()) == before
    convert_checkpoint.main(["orbax-to-hub", "--src", str(src), "--dst", str(dst), "--overwrite"])
    assert sorted(p.name for p in dst.glob("*.safetensors*")) == ["model.safetensors"]
    # Both loaders now read model A.
    ours, a = _tensors(dst), _tensors(tmp_path / "a_hub")
    assert set(ours) == set(a)
    for k in a:
        np.testing.assert_array_equal(ours[k], a[k])
    from transformers import Qwen2_5_VLForConditionalGeneration

    theirs = Qwen2_5_VLForConditionalGeneration.from_pretrained(dst).state_dict()
    np.testing.assert_array_equal(theirs["lm_head.weight"].numpy(), a["lm_head.weight"])


def test_convert_refuses_dst_equal_to_src(tmp_path):
    from tools import convert_checkpoint

    ref.hf_model(tied=False, seed=3).save_pretrained(tmp_path / "hub")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "hub")
    with pytest.raises(SystemExit, match=re.escape(f"--dst {link} is the input --src {tmp_path / 'hub'}")):
        convert_checkpoint.main(["hub-to-orbax", "--src", str(tmp_path / "hub"), "--dst", str(link), "--overwrite"])
    assert not (tmp_path / "hub" / "params").exists()


def test_loader_refuses_mixed_or_incomplete_weights(tmp_path):
    from progress_jax.models import qwen2_5_vl

    ref.hf_model(tied=False, seed=3).save_pretrained(tmp_path / "a", max_shard_size="100KB")
    ref.hf_model(tied=False, seed=4).save_pretrained(tmp_path / "b")
    assert len(safetensors_io.checkpoint_files(str(tmp_path / "a"))) > 1  # clean shards + index: loaded
    qwen2_5_vl.from_pretrained(str(tmp_path / "a"))
    shutil.copy(tmp_path / "b" / "model.safetensors", tmp_path / "a")  # stale single file beside the shards
    with pytest.raises(ValueError, match="both single-file weights .*model.safetensors.* and sharded weights"):
        qwen2_5_vl.from_pretrained(str(tmp_path / "a"))
    os.remove(tmp_path / "a" / "model.safetensors")
    shard = sorted((tmp_path / "a").glob("model-*.safetensors"))[-1]
    os.remove(shard)
    with pytest.raises(FileNotFoundError, match=f"names files that are not there: {shard.name}"):
        qwen2_5_vl.from_pretrained(str(tmp_path / "a"))


def test_truncated_weights_name_file_and_tensor(tmp_path):
    from progress_jax.models import qwen2_5_vl

    ref.hf_model(tied=False, seed=3).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    header, start = safetensors_io.read_header(str(path))
    name, info = max(header.items(), key=lambda kv: kv[1]["data_offsets"][1])  # the tensor stored last
    with open(path, "r+b") as f:
        f.truncate(start + info["data_offsets"][1] - 10)
    with pytest.raises(ValueError, match=re.escape(f"{path}: tensor {name} ") + ".*truncated"):
        qwen2_5_vl.from_pretrained(str(tmp_path))
    with open(path, "r+b") as f:
        f.truncate(4)
    with pytest.raises(ValueError, match=re.escape(f"{path}: not a safetensors file")):
        qwen2_5_vl.from_pretrained(str(tmp_path))
