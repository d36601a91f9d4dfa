"""The real vLLM path of the teacher (data_construction/teacher.py VllmTeacher): a tiny random Qwen2.5-VL
built with transformers and saved locally (the project's tiny tokenizer, a Qwen2-VL image processor),
served by vllm.LLM, greedy, against transformers' greedy generate on the same prompts and images
(tokenized and preprocessed by this project, as the jax teacher does; vLLM uses its own processor).

Marked `gpu`: it runs only where vLLM and a CUDA device are present (its CPU twin is the fake-engine
test in tests/test_generate_cot.py). The checkpoint it builds is checked on CPU below.
"""
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_construction.teacher import JaxTeacher, TeacherSampling, VllmTeacher
from data_pipeline.prompts import render_text
from data_pipeline.tokenizer import TINY_PATH, load_tokenizer

MIN_PIXELS, MAX_PIXELS = 56 * 56, 112 * 112


def _has_cuda_vllm() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def tiny_vlm_checkpoint(path) -> str:
    """A random Qwen2.5-VL of the built-in tiny preset, saved as a Hub directory: weights, config,
    the tiny tokenizer and a Qwen2-VL image processor (vLLM builds its processor from these)."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from progress_jax.models import qwen2_5_vl

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**qwen2_5_vl.tiny().to_hf_dict()))
    path = str(path)
    model.save_pretrained(path)
    PreTrainedTokenizerFast(tokenizer_file=TINY_PATH, eos_token="<|im_end|>",
                            pad_token="<|endoftext|>").save_pretrained(path)
    # As in the released Qwen2.5-VL checkpoints, with small images (transformers picks its backend).
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump({"image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor",
                   "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS, "patch_size": 14, "temporal_patch_size": 2,
                   "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                   "image_std": [0.26862954, 0.26130258, 0.27577711], "do_resize": True, "do_rescale": True,
                   "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True}, f, indent=2)
    return path


def _prompts(tmp_path):
    out = []
    for i in range(2):
        files = []
        for j in range(2):
            f = tmp_path / f"img{i}{j}.png"
            Image.fromarray(np.random.default_rng(10 * i + j).integers(0, 255, (84, 84, 3), np.uint8)).save(f)
            files.append(str(f))
        content = [{"type": "text", "text": f"demo {i}"}, {"type": "image", "image": files[0]},
                   {"type": "text", "text": "now"}, {"type": "image", "image": files[1]},
                   {"type": "text", "text": "how far?"}]
        out.append([{"role": "system", "content": "You estimate progress."}, {"role": "user", "content": content}])
    return out


def _hf_greedy(path: str, messages: list[dict], max_new: int) -> str:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    tokenizer = load_tokenizer(None)
    batch = JaxTeacher(None, tokenizer, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).batch([messages])
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.tensor(batch["attention_mask"]),
                             pixel_values=torch.tensor(batch["pixel_values"]),
                             image_grid_thw=torch.tensor(batch["image_grid_thw"]),
                             mm_token_type_ids=(ids == model.config.image_token_id).long(),
                             do_sample=False, max_new_tokens=max_new)
    new = [int(t) for t in out[0, ids.shape[1]:] if int(t) >= 8]  # vLLM's text skips special tokens (ids 0..7)
    return tokenizer.decode(new)


def test_tiny_checkpoint_loads_in_transformers(tmp_path):
    """CPU check of the GPU test's checkpoint and reference: the saved image processor grids the
    84x84 images as this project does (6x6 patches), and the greedy reference runs."""
    from transformers import AutoImageProcessor, AutoTokenizer

    path = tiny_vlm_checkpoint(tmp_path / "ckpt")
    messages = _prompts(tmp_path)[0]
    images = [Image.open(p["image"]).convert("RGB") for p in messages[1]["content"] if p["type"] == "image"]
    grid = AutoImageProcessor.from_pretrained(path)(images=images, return_tensors="np")["image_grid_thw"]
    batch = JaxTeacher(None, load_tokenizer(None), min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS).batch([messages])
    assert grid.tolist() == batch["image_grid_thw"].tolist() == [[1, 6, 6], [1, 6, 6]]
    text = render_text(messages, add_generation_prompt=True)
    assert AutoTokenizer.from_pretrained(path)(text)["input_ids"] == load_tokenizer(None).encode(text)
    assert isinstance(_hf_greedy(path, messages, 4), str)


@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda_vllm(), reason="needs vLLM and a CUDA GPU (CPU twin: test_generate_cot's fake engine)")
def test_vllm_teacher_matches_transformers_greedy(tmp_path):
    path = tiny_vlm_checkpoint(tmp_path / "ckpt")
    prompts = _prompts(tmp_path)
    teacher = VllmTeacher.load(path, max_images=2, sampling=TeacherSampling(temperature=0.0, top_p=1.0, top_k=-1,
                                                                            max_tokens=8),
                               dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=2048,
                               mm_processor_kwargs={"min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS})
    texts = teacher(prompts)
    assert len(texts) == 2
    expected = [_hf_greedy(path, m, 8) for m in prompts]
    assert texts == expected
