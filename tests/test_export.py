"""tools/export.py: a run's final/ -> merged Hub checkpoint loaded by transformers, and -> PEFT
adapter loaded by peft; both give this project's logits (tiny random checkpoints, float32)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from progress_jax import export, lora
from progress_jax.models import qwen2_5_vl
from progress_jax import handover
from progress_jax.train import loop
from tests import hf_reference as ref

TOL = 2e-4
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _randomize(model, rank: int, seed: int) -> dict:
    """Trained parameters as a run ends with them: random values everywhere (a LoRA B of zeros
    would make the adapter invisible), written into the model. Returns the flat params."""
    _, params = loop.split(model, lora.trainable_filter(rank))
    rng = np.random.default_rng(seed)
    params = {k: np.asarray(v) + 0.05 * rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    handover.assign(model, params)
    return params


def _meta(rank, path, preset="tiny", seed=0):
    return {"lora": {"rank": rank, "alpha": 8.0, "dropout": 0.05, "targets": lora.DEFAULT_TARGETS},
            "model_path": path, "model_preset": preset, "seed": seed, "steps": 3}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A base Hub checkpoint (with tokenizer-side files) and the final/ of a LoRA run on it."""
    root = tmp_path_factory.mktemp("export")
    base = str(root / "base")
    ref.hf_model(tied=False, seed=3).save_pretrained(base)
    with open(os.path.join(base, "config.json")) as f:
        config = json.load(f)
    config["vision_config"]["tokens_per_second"] = 2  # the released models' value (default 4), not modelled here
    with open(os.path.join(base, "config.json"), "w") as f:
        json.dump(config, f)
    for name, text in (("tokenizer_config.json", '{"model_max_length": 64}'), ("chat_template.jinja", "{{ x }}"),
                       ("preprocessor_config.json", "{}"), ("vocab.json", "{}")):
        with open(os.path.join(base, name), "w") as f:
            f.write(text)
    model = qwen2_5_vl.from_pretrained(base)
    lora.inject(model, rank=4, alpha=8.0, seed=1)
    params = _randomize(model, 4, seed=5)
    final = str(root / "run" / "final")
    handover.save_trainable(final, params, _meta(4, base))
    ids, mask, pv, grid = ref.batch("right")
    ours = np.asarray(model(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid))
    return {"root": root, "base": base, "final": final, "ours": ours}


def _hf_logits_of(hf_model):
    ids, mask, pv, grid = ref.batch("right")
    return ref.hf_logits(hf_model, ids, mask, pv, grid), mask.astype(bool)


def test_hf_export_of_a_lora_run_loads_in_transformers_sharded(lora_run):
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = str(lora_run["root"] / "hf")
    result = export.export_hf(lora_run["final"], out, max_shard_bytes=200_000)
    files = set(os.listdir(out))
    assert {"config.json", "model.safetensors.index.json", "tokenizer_config.json", "chat_template.jinja",
            "preprocessor_config.json", "vocab.json", "generation_config.json"} <= files
    assert sum(f.endswith(".safetensors") for f in files) > 1 and "model.safetensors" not in files
    assert "tokenizer_config.json" in result["side_files"]
    config = json.load(open(os.path.join(out, "config.json")))
    assert config["vision_config"]["tokens_per_second"] == 2  # the base's own config, not a rebuilt one
    section = config["text_config"]["rope_parameters"]["mrope_section"]
    for where in (config, config["text_config"]):  # transformers 4.x's spelling too
        assert where["rope_scaling"] == {"type": "mrope", "mrope_section": section, "rope_type": "default"}
        assert where["rope_theta"] == config["text_config"]["rope_parameters"]["rope_theta"]
    assert config["torch_dtype"] == config["dtype"] == "float32"
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    expected, real = _hf_logits_of(hf)
    assert np.abs(expected[real] - lora_run["ours"][real]).max() <= TOL
    # The merge changed the model: the base alone gives other logits.
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(lora_run["base"], dtype=torch.float32).eval()
    assert np.abs(_hf_logits_of(base)[0][real] - lora_run["ours"][real]).max() > 100 * TOL


def test_peft_export_matches_with_peft(lora_run):
    peft = pytest.importorskip("peft")
    from transformers import Qwen2_5_VLForConditionalGeneration

    out = str(lora_run["root"] / "adapter")
    export.export_peft(lora_run["final"], out)
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.load(open(os.path.join(out, "adapter_config.json")))["base_model_name_or_path"] == lora_run["base"]
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(lora_run["base"], dtype=torch.float32).eval()
    model = peft.PeftModel.from_pretrained(base, out).eval()
    # Every saved factor landed on a module (none left at its init), and none went to the vision tower.
    adapted = [n for n, _ in model.named_modules() if n.endswith("lora_A.default")]
    assert len(adapted) == 2 * 7 and not any("visual" in n for n in adapted)
    expected, real = _hf_logits_of(model)
    assert np.abs(expected[real] - lora_run["ours"][real]).max() <= TOL


def test_refuses_to_overwrite_weights_unless_asked(lora_run):
    out = str(lora_run["root"] / "again")
    export.export_peft(lora_run["final"], out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.export_peft(lora_run["final"], out)
    with pytest.raises(FileExistsError, match="already holds weights"):
        export.export_hf(lora_run["final"], out)
    export.export_hf(lora_run["final"], out, overwrite=True)  # the adapter files go, a checkpoint comes
    assert "adapter_model.safetensors" not in os.listdir(out) and "model.safetensors" in os.listdir(out)
    # Never into an input, --overwrite or not: the run's own final/ or the base checkpoint.
    with pytest.raises(ValueError, match="is the run's final directory"):
        export.export_peft(lora_run["final"], lora_run["final"], overwrite=True)
    with pytest.raises(ValueError, match="is the base checkpoint"):
        export.export_hf(lora_run["final"], lora_run["base"] + "/", overwrite=True)
    assert os.path.isfile(os.path.join(lora_run["final"], handover.TRAINABLE_FILE))
    assert "adapter_model.safetensors" not in os.listdir(out) and "model.safetensors" in os.listdir(out)


def test_refuses_to_replace_the_users_files_unless_asked(lora_run, tmp_path):
    """Not only weights: any file the export would write (config, tokenizer and processor files)."""
    out = tmp_path / "mine"
    out.mkdir()
    mine = {"config.json": '{"mine": 1}', "vocab.json": '{"mine": 2}', "notes.txt": "my notes"}
    for name, text in mine.items():
        (out / name).write_text(text)
    with pytest.raises(FileExistsError, match=f"{out} already holds config.json, vocab.json, which the export would "
                                              "replace: choose another directory, or pass --overwrite"):
        export.export_hf(lora_run["final"], str(out))
    assert {n: (out / n).read_text() for n in mine} == mine and sorted(os.listdir(out)) == sorted(mine)
    export.export_hf(lora_run["final"], str(out), overwrite=True)
    assert (out / "notes.txt").read_text() == "my notes" and "mine" not in (out / "config.json").read_text()


def test_the_tensors_decide_the_lora_rank(lora_run, tmp_path):
    import shutil

    final = tmp_path / "final"
    shutil.copytree(lora_run["final"], final)
    meta = json.loads((final / handover.TRAINABLE_META).read_text())
    meta["lora"]["rank"] = 8  # edited over rank-4 factors
    (final / handover.TRAINABLE_META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trainable.json says lora.rank 8, but the LoRA factors in "
                                         "trainable.safetensors have rank 4"):
        export.export_peft(str(final), str(tmp_path / "adapter"))
    assert not (tmp_path / "adapter").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A full-parameter run of the built-in tiny model (no base path, lora.rank 0), its export, and
    this project's logits of the trained model on one image prompt."""
    root = tmp_path_factory.mktemp("tiny")
    model = qwen2_5_vl.init(qwen2_5_vl.tiny(), seed=7)
    params = _randomize(model, 0, seed=2)
    final = str(root / "final")
    handover.save_trainable(final, params, _meta(0, "", seed=7))
    out = str(root / "hf")
    export.export_hf(final, out)
    grid = np.array([[1, 8, 8]])
    ids = np.array([[10, 11, 3] + [6] * 16 + [4, 12, 13, 14]])
    mask = np.ones_like(ids)
    pv = np.random.default_rng(0).standard_normal((64, 1176)).astype(np.float32)
    ours = np.asarray(model(ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid))
    return {"root": root, "final": final, "out": out, "ids": ids, "mask": mask, "pv": pv, "grid": grid, "ours": ours}


def test_tiny_full_parameter_run_exports_with_its_preset(tiny_run):
    """The base is rebuilt from the preset and the seed; the export loads in transformers with the same logits."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    with pytest.raises(ValueError, match="full-parameter run"):
        export.export_peft(tiny_run["final"], str(tiny_run["root"] / "adapter"))
    t = tiny_run
    hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(t["out"], dtype=torch.float32).eval()
    with torch.no_grad():
        got = hf(input_ids=torch.tensor(t["ids"]), attention_mask=torch.tensor(t["mask"]),
                 pixel_values=torch.tensor(t["pv"]), image_grid_thw=torch.tensor(t["grid"]),
                 mm_token_type_ids=torch.tensor((t["ids"] == 6).astype(np.int64))).logits
    assert np.abs(got.numpy() - t["ours"]).max() <= TOL


def test_tiny_model_export_carries_tokenizer_processor_template_and_generation_config(tiny_run):
    """What a server reads beside the weights: transformers' tokenizer with the chat template
    (the text and ids of this project's prompt code), the image processor (this project's pixels
    and grid), the generation config (stops at <|im_end|>). AutoProcessor assembles these same
    files, plus a video processor that needs torchvision, which the test install does not have."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, GenerationConfig

    from data_pipeline.image_processor import preprocess
    from data_pipeline.prompts import render_text
    from data_pipeline.tokenizer import load_tokenizer

    out = tiny_run["out"]
    assert set(export.BUILTIN_SIDE_FILES) <= set(os.listdir(out))
    tok, ours = AutoTokenizer.from_pretrained(out), load_tokenizer()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How far is the red cup?"}]}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == render_text(messages, add_generation_prompt=True)
    assert tok(text)["input_ids"] == ours.encode(text)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (56, 84, 3), dtype=np.uint8))
    got = AutoImageProcessor.from_pretrained(out)(images=[image], return_tensors="np")
    pixels, grid = preprocess([image])
    assert np.array_equal(got["image_grid_thw"], grid) and np.abs(got["pixel_values"] - pixels).max() < 1e-5
    generation = GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == [ours.eos_id, ours.pad_id] and generation.pad_token_id == ours.pad_id


# transformers 4.x, as serving stacks pinned to it read an export: installed once per machine into
# its own directory (no dependencies: torch, safetensors and the rest come from this install).
TRANSFORMERS_4 = ("transformers==4.57.1", "tokenizers==0.22.2", "huggingface_hub==0.36.2")
_LOGITS_4X = """
import sys, numpy as np, torch, transformers
from transformers import Qwen2_5_VLForConditionalGeneration
assert transformers.__version__ == "4.57.1", transformers.__version__
out = {}
args = sys.argv[2:]  # the output file, then NAME DIRECTORY INPUTS.npz for each export
for name, directory, inputs in zip(args[0::3], args[1::3], args[2::3]):
    x = np.load(inputs)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        out[name] = model(**{k: torch.tensor(x[k]) for k in x.files}).logits.numpy()
np.savez(sys.argv[1], **out)
"""


def _transformers_4() -> str:
    """The directory holding transformers 4.57 (pip install --target, cached under ~/.cache);
    the test is skipped when PyPI cannot be reached to install it."""
    import shutil
    import tempfile

    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "progress_jax")
    target = os.path.join(cache, "transformers-4.57.1")
    if os.path.isfile(os.path.join(target, "transformers", "__init__.py")):
        return target
    os.makedirs(cache, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=cache, prefix=".installing-")
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check",
                            "--target", tmp, *TRANSFORMERS_4], capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        r = None
    if r is None or r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"cannot install {' '.join(TRANSFORMERS_4)}: {(r.stderr.strip().splitlines() or [''])[-1] if r else 'timeout'}")
    try:
        os.rename(tmp, target)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def test_exports_load_in_transformers_4(lora_run, tiny_run, tmp_path):
    """transformers 4.57 (a subprocess with it first on its path) loads both exports, the Hub-based
    LoRA merge and the tiny full-parameter run, to this project's logits: it reads the rope settings
    from `rope_scaling` (mrope_section) and ties lm_head by text_config's tie_word_embeddings."""
    out = str(tmp_path / "hf")
    export.export_hf(lora_run["final"], out)
    ids, mask, pv, grid = ref.batch("right")
    np.savez(tmp_path / "lora.npz", input_ids=ids, attention_mask=mask, pixel_values=pv, image_grid_thw=grid)
    t = tiny_run
    np.savez(tmp_path / "tiny.npz", input_ids=t["ids"], attention_mask=t["mask"], pixel_values=t["pv"],
             image_grid_thw=t["grid"])
    env = {**os.environ, "PYTHONPATH": _transformers_4(), "TRANSFORMERS_VERBOSITY": "error"}
    r = subprocess.run([sys.executable, "-c", _LOGITS_4X, str(tmp_path / "logits.npz"), "lora", out,
                        str(tmp_path / "lora.npz"), "tiny", t["out"], str(tmp_path / "tiny.npz")],
                       env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(tmp_path / "logits.npz")
    real = mask.astype(bool)
    assert np.abs(got["lora"][real] - lora_run["ours"][real]).max() <= TOL
    assert np.abs(got["tiny"] - t["ours"]).max() <= TOL


def test_peft_base_is_named_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("models/base")
    assert export.base_name("models/base") == str(tmp_path / "models" / "base")
    assert export.base_name("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"  # not here: as recorded
    assert export.base_name("") is None  # the built-in tiny model


def test_peft_names_and_target_regex():
    assert export.peft_name("layers/3/mlp/down_proj/lora_b") == \
        "base_model.model.model.language_model.layers.3.mlp.down_proj.lora_B.weight"
    with pytest.raises(ValueError, match="visual/blocks/0"):
        export.peft_name("visual/blocks/0/mlp/fc1/lora_a")
    mods = [f"model.language_model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"]
    import re
    pattern = export._target_modules(mods)
    assert all(re.fullmatch(pattern, m) for m in mods)
    assert not re.fullmatch(pattern, "model.visual.blocks.0.mlp.gate_proj")
    assert not re.fullmatch(pattern, "model.language_model.layers.0.self_attn.k_proj")
    assert export._target_modules(mods[:3]) == sorted(mods[:3])  # layers differ: the explicit list


def test_cli(lora_run, capsys):
    """As a script from another directory (the tool finds the package itself), then in-process."""
    out = str(lora_run["root"] / "cli")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"), lora_run["final"], "--to", "peft",
                        out], cwd=str(lora_run["root"]), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "adapter_model.safetensors" in r.stdout
    from tools import export as tool

    with pytest.raises(SystemExit) as e:
        tool.main([lora_run["final"], "--to", "onnx", out])
    assert e.value.code == 2 and "FORMAT must be hf or peft" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # bad input: one line naming the problem, no traceback
        tool.main([lora_run["final"], "--to", "peft", out])
    assert "already holds weights" in str(e.value.code)
    tool.main([lora_run["final"], "--to", "peft", out, "--overwrite"])
    assert "wrote" in capsys.readouterr().out


def test_a_full_disk_is_one_line_naming_the_file(lora_run, tmp_path, monkeypatch):
    """Before: a traceback ending in OSError, no file named."""
    import errno

    from progress_jax.models import safetensors_io
    from tools import export as tool

    def full(tensors, path, metadata=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(safetensors_io, "save_file", full)
    out = str(tmp_path / "adapter")
    with pytest.raises(SystemExit) as e:
        tool.main([lora_run["final"], "--to", "peft", out])
    assert e.value.code == (f"tools/export.py: error: {out}/adapter_model.safetensors: No space left on device "
                            f"(the export in {out} is incomplete)")
