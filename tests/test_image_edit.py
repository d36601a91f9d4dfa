"""Image editors: procedural edits of ProgressBench-Sim observations, and a real diffusers edit pipeline
(a tiny InstructPix2Pix with random weights built from configs, loaded back by local path)."""
import json
import os
import string

import numpy as np
import pytest
from PIL import Image

from data_construction.construct import Observation, Sample, to_record, write_images
from data_construction.image_edit import EditError, SimEditor, sample_seed
from data_construction.sim.build import make_episode
from data_construction.sim.scene import COLORS
from data_construction.unanswerable import EditProposal
from data_pipeline.records import load_records


@pytest.fixture(scope="module")
def sim_sample(tmp_path_factory):
    """A sim record (episode 0: a purple block, a blue plate, orange distractor) seen from the top at frame 1."""
    ep = make_episode("bench_same", 0, 0, 64)
    assert ep.plan.scene.item(ep.plan.manip).color == "purple"
    sample = Sample("visual_same_view", ep, "camera_top", "camera_top", Observation(1, 0, 1 / ep.key_frames[1]))
    root = str(tmp_path_factory.mktemp("sim") / "images")
    write_images([sample], root)
    path = os.path.join(os.path.dirname(root), "visual_same_view.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps(to_record(sample)) + "\n")
    (record,) = load_records(path, image_root=root)
    image = Image.open(os.path.join(root, record.id, record.observation)).convert("RGB")
    return record, image


def near(image, color, dist=60.0) -> int:
    """Pixels within `dist` (RGB distance) of a color of the sim's palette."""
    x = np.asarray(image, float)
    return int((np.linalg.norm(x - np.asarray(COLORS[color], float), axis=2) < dist).sum())


def test_sim_color_change_uses_the_named_color(sim_sample):
    record, image = sim_sample
    out = SimEditor(seed=0)(record, image, EditProposal("color_change", "Paint the block green."), "k")
    assert out.size == image.size
    assert near(image, "purple") > 20 and near(out, "purple") < near(image, "purple") // 5
    assert near(out, "green") > near(image, "green") + 20


def test_sim_removal_replacement_and_occlusion(sim_sample):
    record, image = sim_sample
    editor = SimEditor(seed=0)
    removed = editor(record, image, EditProposal("occlusion_removal", "Remove the purple block."), "k")
    assert near(removed, "purple") < 3
    occluded = editor(record, image, EditProposal("occlusion_removal", "Hide the block under a gray cloth."), "k")
    gray = np.abs(np.asarray(occluded, float) - 128).max(axis=2) < 40
    assert near(occluded, "purple") < 3 and gray.sum() > gray.size * 0.02
    replaced = np.asarray(editor(record, image, EditProposal("object_replacement", "Turn it into a can."), "k"), int)
    diff = np.abs(replaced - np.asarray(image, int)).max(axis=2) > 40
    assert diff.mean() > 0.002 and near(Image.fromarray(replaced.astype(np.uint8)), "purple") > 10  # a purple cylinder


def test_sim_wrong_seed_or_foreign_id_is_an_error(sim_sample):
    record, image = sim_sample
    with pytest.raises(EditError, match="seed"):
        SimEditor(seed=5)(record, image, EditProposal("color_change", "make it red"), "k")
    from dataclasses import replace
    with pytest.raises(EditError, match="not a ProgressBench-Sim id"):
        SimEditor()(replace(record, id="lab/0001"), image, EditProposal("color_change", "make it red"), "k")


def tiny_pix2pix(path: str):
    """InstructPix2Pix with random weights: 2-block UNet (8 input channels: latents + image latents),
    2-block VAE, a 1-layer CLIP text encoder and a character-level CLIP tokenizer written to disk."""
    import torch
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: i + 2 for i, c in enumerate(chars)})
    vocab.update({c + "</w>": i + 2 + len(chars) for i, c in enumerate(chars)})
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump(vocab, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"), model_max_length=32)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=8,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
                                norm_num_groups=4, attention_head_dim=2)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, sample_size=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=16))
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                  scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                                  requires_safety_checker=False)


def test_diffusers_editor_on_a_tiny_random_pipeline(tmp_path, sim_sample):
    pytest.importorskip("diffusers", reason="diffusers is in the test/tools extras")
    import torch

    from data_construction.image_edit import DiffusersEditor

    tiny_pix2pix(str(tmp_path / "tok")).save_pretrained(str(tmp_path / "pipe"))
    editor = DiffusersEditor.load(str(tmp_path / "pipe"), dtype="float32", device="cpu", num_inference_steps=2,
                                  guidance_scale=3.0, negative_prompt="blurry")
    assert type(editor.pipe).__name__ == "StableDiffusionInstructPix2PixPipeline"
    record, _ = sim_sample
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    proposal = EditProposal("color_change", "make the block green")

    def direct(seed):
        return editor.pipe(image=image, prompt=proposal.instruction, negative_prompt="blurry", num_inference_steps=2,
                           guidance_scale=3.0, generator=torch.Generator("cpu").manual_seed(seed)
                           ).images[0].resize(image.size, Image.BICUBIC)

    # Default: the official fixed seed 42 for every sample (eval/img_edit/edit_batch.py), whatever the key.
    out = editor(record, image, proposal, "key-1")
    assert out.size == image.size and out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(direct(42)))
    np.testing.assert_array_equal(np.asarray(editor(record, image, proposal, "key-2")), np.asarray(out))
    # per_sample_seed: seed + crc32(key), a different edit per sample.
    per_sample = DiffusersEditor(editor.pipe, num_inference_steps=2, guidance_scale=3.0, negative_prompt="blurry",
                                 seed=7, per_sample_seed=True)
    one = per_sample(record, image, proposal, "key-1")
    np.testing.assert_array_equal(np.asarray(one), np.asarray(direct(sample_seed(7, "key-1"))))
    other = per_sample(record, image, proposal, "key-2")
    assert np.abs(np.asarray(one, int) - np.asarray(other, int)).max() > 0
    with pytest.raises(ValueError, match=r"StableDiffusionInstructPix2PixPipeline does not accept \['true_cfg_scale'\]"):
        DiffusersEditor(editor.pipe, true_cfg_scale=4.0)
