"""Config variants, the one validator and the entry point's command-line behaviour.

The paper numbers below are read from the official release's files (ProgressLM/ProgressLM:
LLaMA-Factory/our_scripts/qwen2_5vl_lora_sft_small.yaml, EasyR1/progresslm/configs/visual_demo_grpo.yaml,
eval/qwen25vl/scripts/benchmarks/*/think_3b.sh), not from our configs."""

import json
import os
import subprocess
import sys

import pytest

from configs import eval as eval_config
from configs import grpo as grpo_config
from configs import sft as sft_config
from progress_jax import config_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def main(*args):
    return subprocess.run([sys.executable, "-m", "progress_jax.main", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


def test_sft_paper_is_llama_factory_recipe():
    c = sft_config.get_config("paper")
    assert (c.lora.rank, c.lora.alpha, c.lora.dropout) == (8, 16.0, 0.05)  # lora_rank/alpha/dropout
    for proj in ("q", "k", "v", "o"):  # lora_target: all (every LM linear layer)
        assert config_check.re.search(c.lora.targets, f"layers/0/self_attn/{proj}_proj")
    for proj in ("gate", "up", "down"):
        assert config_check.re.search(c.lora.targets, f"layers/27/mlp/{proj}_proj")
    assert not config_check.re.search(c.lora.targets, "visual/blocks/0/attn/qkv")
    t = c.train
    assert (t.lr, t.schedule, t.warmup_ratio, t.weight_decay, t.clip_norm) == (1e-4, "cosine", 0.1, 0.0, 1.0)
    assert t.batch_size == 2 * 8 * 4  # per_device_train_batch_size x gradient_accumulation_steps x 4 GPUs
    assert t.epochs == 3.0 and t.steps == 0  # num_train_epochs: 3.0
    assert c.data.length_buckets[-1] == 30000  # cutoff_len
    assert c.data.max_pixels == 1003520  # image_max_pixels
    assert c.model.param_dtype == c.model.compute_dtype == "bfloat16"  # bf16: true
    assert c.data.prompt == "official" and c.job == "sft"


def test_grpo_paper_is_easyr1_recipe():
    c = grpo_config.get_config("paper")
    assert c.job == "grpo" and c.lora.rank == 0 and c.model.freeze_vision is False  # freeze_vision_tower: false
    t, g = c.train, c.grpo
    assert (t.lr, t.schedule, t.warmup_ratio, t.weight_decay) == (1e-6, "constant", 0.0, 1e-2)
    assert (g.kl_coef, g.n, g.rollout_batch_size, t.batch_size) == (1e-2, 4, 64, 64)
    assert (c.sampling.temperature, c.sampling.top_p, c.sampling.max_new_tokens) == (0.6, 0.9, 8192)
    assert c.data.length_buckets[-1] == 20000  # max_prompt_length
    assert (c.data.min_pixels, c.data.max_pixels) == (3136, 12845056)
    assert t.epochs == 2.0 and t.steps == 0 and g.reward == "paper" and g.advantage == "grpo"
    assert c.model.compute_dtype == "bfloat16" and c.data.prompt == "official"


def test_eval_paper_is_official_script_settings():
    c = eval_config.get_config("paper")
    s = c.sampling
    assert (s.temperature, s.top_p, s.top_k, s.max_new_tokens) == (0.6, 0.9, 50, 40000)
    assert (c.data.min_pixels, c.data.max_pixels) == (1280 * 28 * 28, 5120 * 28 * 28)
    assert c.data.prompt == "official" and c.job == "eval"


@pytest.mark.parametrize("module", [sft_config, grpo_config, eval_config])
def test_demo_is_the_default_and_every_variant_validates(module):
    assert module.get_config().to_dict() == module.get_config("demo").to_dict()
    config_check.check(module.get_config())
    config_check.check(module.get_config("paper"), runnable=False)
    with pytest.raises(config_check.ConfigError, match="model.path"):  # the paper recipes need a checkpoint
        config_check.check(module.get_config("paper"))
    with pytest.raises(ValueError, match="unknown config variant 'papr'.*demo, paper"):
        module.get_config("papr")


def test_sft_nano_validates_and_trains_the_nano_preset():
    from progress_jax.models import qwen2_5_vl

    c = sft_config.get_config("nano")
    config_check.check(c)
    assert (c.model.preset, c.train.lr, c.train.schedule, c.model.freeze_vision) == ("nano", 1e-3, "constant", False)
    nano, tiny = qwen2_5_vl.preset("nano"), qwen2_5_vl.preset("tiny")
    assert (nano.text.num_attention_heads, nano.text.num_key_value_heads, nano.text.head_dim) == (8, 8, 16)
    assert (nano.vision.num_heads, nano.vision.head_dim) == (2, 32)
    assert nano.text.hidden_size == tiny.text.hidden_size and nano.vision.hidden_size == tiny.vision.hidden_size


def test_grpo_nano_starts_from_the_nano_sft_on_its_sim():
    """configs/grpo.py:nano is GRPO alone, from the regression test's SFT weights, on the data the nano
    SFT trained on (the same sim, image size and buckets), its probe sampled with two keys."""
    c = grpo_config.get_config("nano")
    config_check.check(c)
    s = sft_config.get_config("nano")
    assert (c.job, c.model.preset, c.train.init_params, c.grpo.probe_keys) == ("grpo", "nano", "weights/sim_nano_sft", 2)
    assert "demo" not in c and c.model.freeze_vision
    for key in ("sim_dir", "sim_size", "sim_seed", "sim_image_size", "sim_reasoning", "min_pixels", "max_pixels",
                "length_buckets", "patch_buckets", "image_buckets", "prompt"):
        assert c.data[key] == s.data[key], key


def test_grpo_default_runs_the_demo_chain_with_one_set_of_demo_data():
    c = grpo_config.get_config()
    assert c.job == "demo" and c.demo.warm_start and c.demo.evaluate
    s = c.demo.sft
    assert s.job == "sft" and s.lora.rank == 0
    # The demo data is one set: the same in every job's demo variant.
    keys = ("sim_dir", "sim_reasoning", "min_pixels", "max_pixels", "length_buckets", "patch_buckets", "image_buckets")
    for module in (sft_config, eval_config):
        d = module.get_config().data
        assert [d[k] for k in keys] == [c.data[k] for k in keys]
    # The warm start follows this config's data settings.
    c.data.max_pixels = 56 * 84
    c.seed = 7
    r = c.copy_and_resolve_references()
    assert r.demo.sft.data.max_pixels == 56 * 84 and r.demo.sft.seed == 7


@pytest.mark.parametrize("key,value,message", [
    ("train.lr", 0.0, "config key train.lr must be > 0"),
    ("grpo.n", 0, "config key grpo.n must be >= 1"),
    ("sampling.top_p", 1.5, "config key sampling.top_p must be <= 1"),
    ("data.mode", "thinking", "config key data.mode must be one of 'think', 'direct'"),
    ("data.prompt", "mine", "config key data.prompt must be one of 'official', 'interleaved'"),
    ("data.sim_reasoning", "long", "config key data.sim_reasoning must be one of 'full', 'brief', 'observe', 'passed'"),
    ("data.patch_buckets", (1024, 512), "config key data.patch_buckets must be strictly increasing"),
    ("grpo.advantage", "ppo", "config key grpo.advantage: unknown advantage estimator 'ppo'"),
    ("grpo.reward", "nothing", "config key grpo.reward: unknown reward 'nothing'"),
    ("grpo.reward", "tests.test_configs:no_such_fn", "grpo.reward: module 'tests.test_configs' has no function"),
    ("train.micro_batch_size", 3, "config key train.micro_batch_size must divide train.batch_size x grpo.n"),
    ("lora.targets", "(", "config key lora.targets is not a valid regular expression"),
])
def test_validator_names_the_full_key(key, value, message):
    c = grpo_config.get_config("paper")
    c.model.path = "/some/checkpoint"
    section, name = key.split(".")
    with c.unlocked():
        c[section][name] = value
    with pytest.raises(config_check.ConfigError, match=config_check.re.escape(message)):
        config_check.check(c)


def test_validator_names_nested_demo_keys():
    c = grpo_config.get_config()
    c.demo.sft.train.lr = -1.0
    with pytest.raises(config_check.ConfigError, match=r"config key demo\.sft\.train\.lr must be > 0"):
        config_check.check(c)


@pytest.mark.parametrize("module", [sft_config, grpo_config])
def test_wandb_asked_for_but_not_installed_is_refused_by_the_config_check(monkeypatch, module):
    """Before: the ImportError came from the metrics writer, after the model had loaded."""
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails as if not installed
    c = module.get_config()
    c.logging.wandb_project = "progress"
    with pytest.raises(config_check.ConfigError, match=config_check.re.escape(
            "config key logging.wandb_project is 'progress' but the wandb package is not installed: "
            "pip install wandb, or leave logging.wandb_project empty")):
        config_check.check(c)
    c.logging.wandb_project = ""
    config_check.check(c)


def test_print_config_prints_the_paper_recipe_as_json_without_a_model():
    done = main("--config", "configs/grpo.py:paper", "--print_config")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["train"]["lr"] == 1e-6 and printed["grpo"]["n"] == 4 and printed["model"]["path"] == ""
    assert printed["data"]["length_buckets"] == [2048, 4096, 8192, 16384, 20000]
    done = main("--config", "configs/grpo.py", "--config.data.max_pixels=3136", "--print_config")
    assert json.loads(done.stdout)["demo"]["sft"]["data"]["max_pixels"] == 3136  # references resolved


def test_help_points_to_print_config():
    done = main("--help")
    assert "--print_config" in done.stdout and "configs/X.py[:demo|:paper]" in done.stdout


@pytest.mark.parametrize("args,line", [
    (["--config.train.stepz=3"], "error: unknown config key train.stepz in --config.train.stepz; did you mean train.steps"),
    (["--config.trian.steps=3"], "error: unknown config key trian.steps in --config.trian.steps; did you mean train.steps"),
    (["--config.train.steps=abc"], "error: flag --config.train.steps=abc: invalid literal for int()"),
    (["--config.train.lr=-1"], "error: config key train.lr must be > 0, got -1.0"),
])
def test_command_line_mistakes_are_one_line(args, line):
    done = main("--config", "configs/sft.py", *args, "--print_config")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(line), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_unknown_variant_is_one_line():
    done = main("--config", "configs/eval.py:paperr", "--print_config")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == ("error: --config configs/eval.py:paperr: unknown config variant 'paperr'; "
                                   "expected one of demo, paper, nano (e.g. --config configs/grpo.py:paper)")


def test_paper_variants_have_their_own_workdirs():
    for module, demo in ((sft_config, "runs/sft"), (grpo_config, "runs/grpo"), (eval_config, "runs/eval")):
        assert module.get_config("demo").workdir == demo and module.get_config("paper").workdir == demo + "-paper"


def test_list_valued_keys_take_comma_separated_values():
    """Before, `--config.data.train_files=a.jsonl,b.jsonl` became the one file "a.jsonl,b.jsonl"."""
    from progress_jax.main import check_overrides

    argv = ["main", "--config", "configs/sft.py", "--config.data.train_files=a.jsonl, b.jsonl",
            "--config.data.length_buckets=256,512", "--config.data.patch_buckets=(128,)", "--config.train.steps=3"]
    problem, out = check_overrides(argv)
    assert problem is None and out[:2] == argv[:2] and out[-1] == argv[-1]
    assert out[3:6] == ["--config.data.train_files=('a.jsonl', 'b.jsonl')", "--config.data.length_buckets=(256, 512)",
                        "--config.data.patch_buckets=(128,)"]
    problem, _ = check_overrides(argv[:3] + ["--config.data.length_buckets=256,abc"])
    assert problem == "--config.data.length_buckets=256,abc: expected comma-separated int values"
    done = main("--config", "configs/sft.py", "--config.data.train_files=a.jsonl,b.jsonl", "--print_config",
                "--config.data.length_buckets=(256,)", "--config.data.length_buckets=300,400", "--config.train.lr=1",
                "--config.train.lr=2")
    printed = json.loads(done.stdout)
    assert printed["data"]["train_files"] == ["a.jsonl", "b.jsonl"], done.stderr
    # A key given twice: the last value, for a list as for a number (absl alone joins a list's values).
    assert printed["data"]["length_buckets"] == [300, 400] and printed["train"]["lr"] == 2.0
    problem, out = check_overrides(argv[:3] + ["--config.train.steps", "5", "--config.train.steps=7"])
    assert problem is None and out == argv[:3] + ["--config.train.steps=7"]


# Installed by the test extra only (setup.py): the main job must not need any of them.
TEST_ONLY = ("torch", "transformers", "peft", "diffusers", "gradio", "playwright", "pytest", "torchvision", "wandb")
_CORE_ONLY = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (test extra only)", name=name)
sys.meta_path.insert(0, Block())
import importlib
from progress_jax import main
for module in main.JOBS.values():
    importlib.import_module(module)
from progress_jax.train.metrics_writer import MetricsWriter
from progress_jax.train import curves
with MetricsWriter(sys.argv[2]) as w:  # TensorBoard, as the jobs write it
    w.write(1, {"loss": 1.0})
    w.write(2, {"loss": 0.5})
curves.plot_curves(sys.argv[2])  # the training curves (matplotlib)
print("core ok")
"""


def test_the_main_job_needs_only_the_core_install(tmp_path):
    """The jobs' modules, the metrics writer (TensorBoard) and the training curves with every test-extra
    package made unimportable, as in `pip install -e .` without `[test]`."""
    done = subprocess.run([sys.executable, "-c", _CORE_ONLY, ",".join(TEST_ONLY), str(tmp_path)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "core ok" in done.stdout, done.stderr[-3000:]
    assert (tmp_path / "metrics.jsonl").exists() and (tmp_path / "training_curves.png").exists()
