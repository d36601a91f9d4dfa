"""`--dry_run --json` on the tiny model and the 8-device CPU mesh (tests/conftest.py): the named
programs with positive sizes, FLOPs of the size a FLOP count of the model predicts, `fits` false
for a tiny device memory; no weight and no data file read (model.path holds only config.json)."""
import json
import os

import pytest

from configs import eval as eval_config
from configs import grpo as grpo_config
from configs import sft as sft_config
from progress_jax import config_check, main
from progress_jax.models.qwen2_5_vl import config as qwen_config
from progress_jax.models.qwen2_5_vl import family
from tests.killable import xla_flags

LENGTH, PATCHES = 512, 2048  # small buckets: the tiny model compiles in seconds


def only_config_json(tmp_path) -> str:
    """A model directory holding config.json alone (no weights, no tokenizer)."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(qwen_config.tiny().to_hf_dict()))
    return str(d)


def configured(get_config, tmp_path, **over):
    c = get_config("demo")
    c.model.path = only_config_json(tmp_path)
    c.model.preset = ""
    c.data.length_buckets, c.data.patch_buckets = (LENGTH,), (PATCHES,)
    missing = str(tmp_path / "no_such_file.jsonl")  # a data file read would fail
    if "train_files" in c.data:
        c.data.train_files = (missing,)
    c.data.bench_dir = str(tmp_path / "no_bench")
    for key, value in over.items():
        section, name = key.split("__")
        c[section][name] = value
    config_check.check(c)
    return c


def report(config, capsys) -> list[dict]:
    main.dry(config, as_json=True)
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"programs"}
    return out["programs"]


def check_sizes(p: dict) -> None:
    assert p["devices"] == 8 and p["flops_per_device"] > 0 and p["compile_s"] > 0
    b = p["bytes_per_device"]
    assert b["arguments"] > 0 and b["temp"] > 0 and b["output"] > 0
    assert p["fits"] is True


def test_sft_train_step(tmp_path, capsys):
    config = configured(sft_config.get_config, tmp_path, train__batch_size=16)  # two micro-batches of 8
    (p,) = report(config, capsys)
    assert p["micro_batches"] == 2
    assert p["name"] == "train_step"
    check_sizes(p)
    # Full-parameter training of the language model: two float32 Adam moments of the trained
    # params (the frozen vision tower has none).
    b = p["bytes_per_device"]
    assert 0.5 * b["params"] < b["optimizer"] < 2 * b["params"]
    assert b["arguments"] >= b["params"] + b["optimizer"]
    # The model's own FLOP count (language model, 6 N per token) for the step's tokens, per device;
    # XLA also counts the vision tower, attention and the loss.
    tokens = config.train.batch_size * LENGTH
    expected = family.flops_per_token(qwen_config.tiny(), LENGTH, lora_on=False) * tokens / 8
    assert expected * 0.8 <= p["flops_per_device"] <= expected * 4


def test_grpo_rollout_logprobs_train_step(tmp_path, capsys):
    config = configured(grpo_config.get_config, tmp_path, sampling__max_new_tokens=32, sampling__batch_size=8)
    programs = report(config, capsys)
    assert [p["name"] for p in programs] == ["rollout", "decode", "logprobs", "train_step"]
    for p in programs:
        check_sizes(p)
    rollout, decode = programs[:2]
    assert rollout["rows"] == decode["rows"] == 8 and rollout["max_batch_size"] >= 8
    # The update holds the Adam moments; the log-prob program no optimizer state.
    assert programs[2]["bytes_per_device"]["optimizer"] == 0 < programs[3]["bytes_per_device"]["optimizer"]
    # The engine's KV cache (keys and values of every layer for prompt + new tokens in whole blocks
    # of 256, float32, slots split over the 8 devices) is an argument of both programs.
    t = qwen_config.tiny().text
    cache = 2 * t.num_hidden_layers * (8 // 8) * 768 * t.num_key_value_heads * t.head_dim * 4
    assert decode["kv_bytes_per_device"] == cache
    assert rollout["bytes_per_device"]["arguments"] >= cache and decode["bytes_per_device"]["arguments"] >= cache
    # One decode step with the weights laid out for decoding (sampling.decode_layout "tensor", at
    # mesh.tensor 1 whole on every device): no weight moves, only the slots' tokens and logits.
    assert decode["layout"] == "tensor"
    mlp = 3 * t.num_hidden_layers * t.hidden_size * t.intermediate_size * 4  # the MLPs' float32 weights
    assert decode["comm_bytes_per_token"] < mlp / 100


def test_decode_in_the_training_layout_gathers_the_weights(tmp_path, capsys):
    """sampling.decode_layout "fsdp": every decode step gathers each layer's weights (7/8 of them
    from the other devices); the weights lie on the devices at 1/8 of the "tensor" layout's bytes."""
    config = configured(eval_config.get_config, tmp_path, sampling__max_new_tokens=16, sampling__batch_size=8)
    _, tensor = report(config, capsys)
    config.sampling.decode_layout = "fsdp"
    _, fsdp = report(config, capsys)
    t = qwen_config.tiny().text
    mlp = 3 * t.num_hidden_layers * t.hidden_size * t.intermediate_size * 4
    assert fsdp["layout"] == "fsdp" and fsdp["comm_bytes_per_token"] > mlp * 7 / 8
    assert tensor["comm_bytes_per_token"] < fsdp["comm_bytes_per_token"] / 100
    assert tensor["bytes_per_device"]["params"] > 6 * fsdp["bytes_per_device"]["params"]


def test_eval_and_tiny_device_memory_does_not_fit(tmp_path, capsys):
    config = configured(eval_config.get_config, tmp_path, train__device_memory_gb=1e-4, sampling__max_new_tokens=16)
    p, decode = report(config, capsys)
    assert p["name"] == "rollout" and p["fits"] is False and decode["name"] == "decode"
    assert p["max_batch_size"] == 0
    main.dry(config)  # the table names the key to change
    assert "--config.sampling.batch_size" in capsys.readouterr().out


def test_cli_dry_run_json(tmp_path):
    """The command a user runs, in a fresh process: JSON alone on stdout."""
    import subprocess
    import sys

    model = only_config_json(tmp_path)
    cmd = [sys.executable, "-m", "progress_jax.main", "--config", "configs/eval.py", "--dry_run", "--json",
           f"--config.model.path={model}", "--config.model.preset=", "--config.data.length_buckets=(512,)",
           "--config.data.patch_buckets=(1024,)", "--config.sampling.max_new_tokens=8",
           "--config.mesh.fsdp=2", "--config.mesh.data=1", f"--config.data.bench_dir={tmp_path / 'none'}"]
    env = {**os.environ, "XLA_FLAGS": xla_flags(2), "JAX_PLATFORMS": "cpu"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    p, decode = json.loads(out.stdout)["programs"]
    assert p["name"] == "rollout" and p["devices"] == 2 and p["fits"] is True
    assert decode["name"] == "decode" and decode["kv_bytes_per_device"] > 0


def test_the_dry_run_compiles_the_programs_a_run_executes():
    """The dry run's programs are the run's: each job's spec as its trainer builds it (the tiny
    preset's policy loaded, the state placed on the 8-device mesh) and the dry run's (abstract)
    lower to the same text for every named program, at the dry run's largest shapes."""
    from progress_jax import distributed, dry_run, jobs

    configs = {"sft": sft_config.get_config("demo"), "grpo": grpo_config.get_config("demo")}
    for job, c in configs.items():
        c.job, c.model.path, c.model.preset = job, "", "tiny"
        c.data.length_buckets, c.data.patch_buckets = (LENGTH,), (PATCHES,)
        c.train.steps, c.lora.rank, c.sampling.max_new_tokens = 3, 8, 16
    configs["grpo"].grpo.kl_coef = 0.05  # with LoRA: the LoRA-off reference is a program of its own
    mesh = distributed.make_mesh(configs["sft"])
    # The policy both trainers load (the demo configs' model, LoRA and seed are the same): built once.
    assert all(configs["sft"][k].to_dict() == configs["grpo"][k].to_dict() for k in ("model", "lora"))
    model = jobs.policy(configs["sft"], mesh)
    expected = {"sft": ["train_step"], "grpo": ["rollout", "logprobs", "ref_logprobs", "train_step"]}
    for job, c in configs.items():
        run = jobs.SPECS[job](c, mesh, model=model)
        dry = jobs.spec(c, mesh, abstract=True)
        run_args, dry_args = dry_run.program_args(run), dry_run.program_args(dry)
        assert list(run_args) == list(dry_args) == list(run.programs) == expected[job]
        for name in expected[job]:
            ran = run.programs[name].trace(*run_args[name]).lower().as_text()
            assert ran == dry.programs[name].trace(*dry_args[name]).lower().as_text(), (job, name)
    assert run.programs["rollout"].n == c.grpo.n > 1  # GRPO samples n per prompt from one prefill
