"""The eval job end to end on a four-sample benchmark built here: predictions, resume, metrics.json."""

import json
import logging
import os

import jax
import numpy as np
import pytest
from PIL import Image

from configs import eval as eval_config
from progress_jax import loading, main

DEMO = ["f0.jpg", "f1.jpg", "f2.jpg"]
# Long enough that the text prompt falls in the visual prompts' length bucket: one compiled program.
STEPS = [f"move the gripper towards the drawer handle, slowly, step {i}" for i in range(1, 9)]


def vis(tid, obs, score, closest):
    return {"id": tid, "task_goal": "put the red cup on the plate", "visual_demo": DEMO, "total_steps": "2",
            "stage_to_estimate": [obs], "closest_idx": closest, "delta": "+5%" if score != "n/a" else "n/a",
            "progress_score": score, "data_source": "test"}


def write_bench(root) -> list[tuple[str, str, str]]:
    bench = {
        # Lines 1 and 3 share (id, stage) with different ground truth, as 20 lines of the official
        # visual_same_view.jsonl do: two samples.
        "visual_same_view": [vis("t1", "o1.jpg", "30%", "2"), vis("t1", "o2.jpg", "80%", "3"),
                             vis("t1", "o1.jpg", "40%", "2")],
        "visual-unanswerable": [vis("t1", "o3.jpg", "n/a", "n/a")],
        "text-normal": [{"id": "t2", "task_goal": "open the drawer", "text_demo": STEPS,
                         "total_steps": len(STEPS), "stage_to_estimate": "o1.jpg", "closest_idx": 1, "progress_score": "50%"}],
    }
    rng = np.random.default_rng(0)
    keys = []
    for stem, records in bench.items():
        with open(os.path.join(root, f"{stem}.jsonl"), "w") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
                obs = r["stage_to_estimate"]
                obs = obs[0] if isinstance(obs, list) else obs
                keys.append((stem, r["id"], obs))
                for name in r.get("visual_demo", []) + [obs]:
                    path = os.path.join(root, "images", r["id"], name)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    Image.fromarray(rng.integers(0, 255, (56, 84, 3), dtype=np.uint8)).save(path)
    return keys


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def config(tmp_path, monkeypatch):
    bench = tmp_path / "bench"
    bench.mkdir()
    keys = write_bench(bench)
    c = eval_config.get_config()
    c.data.bench_dir = str(bench)
    c.workdir = str(tmp_path / "run")
    c.sampling.max_new_tokens = 8
    c.sampling.temperature = 0.0  # greedy: a sample's answer must not depend on its batch
    c.sampling.batch_size = 2
    # Every run of the job gets the same tiny random model, built once (its init is slow on CPU).
    built = {}
    load = loading.load_model
    monkeypatch.setattr(loading, "load_model", lambda cfg, mesh=None: built.setdefault("model", load(cfg, mesh)))
    return c, keys


def test_eval_job_predicts_resumes_and_scores(config, capsys, caplog):
    caplog.set_level(logging.INFO, logger="progress_jax")
    c, keys = config
    main.run(c)
    pred_path = os.path.join(c.workdir, "think", "predictions.jsonl")
    lines = read_lines(pred_path)
    assert sorted((o["setting"], o["id"], o["stage"]) for o in lines) == sorted(keys)
    assert all(isinstance(o["response"], str) and o["response"] for o in lines)
    assert "5 of 5 samples to predict" in caplog.text and "| tiny-random |" in capsys.readouterr().out
    assert sorted(o["line"] for o in lines if o["setting"] == "visual_same_view") == [1, 2, 3]

    metrics = json.load(open(os.path.join(c.workdir, "think", "metrics.json")))
    assert set(metrics) == {"visual_same_view", "visual-unanswerable", "text-normal", "vision", "text", "micro", "macro",
                            "coverage"}
    assert metrics["coverage"]["matched"] == 5 and metrics["coverage"]["missing"] == metrics["coverage"]["extra"] == 0
    assert metrics["visual_same_view"]["n"] == 3 and metrics["vision"]["n_answerable"] == 3
    assert {"nse", "prc", "afrr", "uda"} <= set(metrics["macro"])

    # A rerun predicts nothing; after dropping one line it predicts exactly that sample again
    # (the duplicate's twin, with the same id and stage, stays done).
    before = open(pred_path).read()
    caplog.clear()
    main.run(c)
    assert open(pred_path).read() == before
    assert "0 of 5 samples to predict" in caplog.text
    dropped = next(o for o in lines if o["setting"] == "visual_same_view" and o["line"] == 3)
    with open(pred_path, "w") as f:
        f.writelines(json.dumps(o) + "\n" for o in lines if o is not dropped)
    caplog.clear()
    main.run(c)
    assert "1 of 5 samples to predict" in caplog.text
    redone = read_lines(pred_path)
    assert len(redone) == 5 and redone[-1] == dropped


def test_missing_bench_dir_names_the_key(config):
    c, _ = config
    c.data.bench_dir = "/nonexistent/bench"
    with pytest.raises(FileNotFoundError, match="data.bench_dir"):
        main.run(c)


@pytest.mark.heavy
def test_eval_job_on_a_trained_run(config, tmp_path, monkeypatch):
    """eval.trained=RUN/final: the job evaluates the run's LoRA model (its rank, alpha, targets and
    trained tensors), answering exactly like that model in memory, and unlike the base model."""
    from flax import nnx

    from progress_jax import lora
    from progress_jax.eval import runner
    from progress_jax import handover
    from progress_jax.train import loop

    c, _ = config
    base = loading.load_model(c)
    # The job injects LoRA into what load_model returns: hand it a fresh copy each time.
    monkeypatch.setattr(loading, "load_model", lambda cfg, mesh=None: nnx.clone(base))
    policy = nnx.clone(base)
    lora.inject(policy, 4, 8.0, targets=lora.DEFAULT_TARGETS, seed=3)
    for i, (_, lin) in enumerate(lora._linears(policy)):
        if lin.lora_b is not None:  # B = 0 at init would make the adapters a no-op
            lin.lora_b.set_value(0.5 * jax.random.normal(jax.random.key(i), lin.lora_b.shape))
    _, params = loop.split(policy, lora.trainable_filter(4))
    final = tmp_path / "myrun" / "final"
    handover.save_trainable(str(final), params, {"lora": {"rank": 4, "alpha": 8.0, "dropout": 0.05,
                                                          "targets": lora.DEFAULT_TARGETS},
                                                 "model_path": "", "model_preset": "tiny"})

    def responses(out_dir):
        return {(o["setting"], o["id"], o["stage"]): o["response"]
                for o in read_lines(os.path.join(out_dir, "predictions.jsonl"))}

    main.run(c)
    untrained = responses(os.path.join(c.workdir, "think"))
    c.eval.trained = str(final)
    c.workdir = str(tmp_path / "trained")
    main.run(c)
    got = responses(os.path.join(c.workdir, "think"))
    assert "| myrun |" in open(os.path.join(c.workdir, "think", "table1.md")).read()

    r = c.copy_and_resolve_references()
    files, root = runner.bench_files(r)
    runner.evaluate(policy, loading.load_tokenizer(r), files, root, str(tmp_path / "direct"), r, run_name="direct")
    assert got == responses(tmp_path / "direct")
    assert got != untrained


def test_trained_run_on_another_base_is_refused(config, tmp_path):
    c, _ = config
    final = tmp_path / "final"
    os.makedirs(final)
    (final / "trainable.json").write_text(json.dumps({"lora": {"rank": 0, "alpha": 16.0, "targets": ""},
                                                      "model_path": "/ckpt/Qwen2.5-VL-3B-Instruct"}))
    c.eval.trained = str(final)
    with pytest.raises(ValueError, match="eval.trained.*Qwen2.5-VL-3B-Instruct"):
        main.run(c)


@pytest.fixture
def no_model(config, tmp_path, monkeypatch):
    """The job up to generation: the tests below must fail before any model call; the system temp
    directory is a fresh one, to see what the job leaves there."""
    import tempfile

    monkeypatch.setattr(loading, "load_model", lambda cfg, mesh=None: None)
    tmp = tmp_path / "systemtmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return config[0], tmp


def test_resumed_eval_names_the_users_file_and_line_for_a_missing_image(no_model):
    from data_pipeline.records import RecordError

    c, tmp = no_model
    bench = c.data.bench_dir
    out = os.path.join(c.workdir, "think")
    os.makedirs(out)
    from progress_jax.eval import provenance

    r = c.copy_and_resolve_references()
    made_by = provenance.digest(provenance.describe(r, {"model": provenance.model_identity(r), "trained": None}))
    with open(os.path.join(out, "predictions.jsonl"), "w") as f:  # line 1 of visual_same_view already done
        f.write(json.dumps({"setting": "visual_same_view", "id": "t1", "stage": "o1.jpg", "line": 1, "score": 0.3,
                            "made_by": made_by}) + "\n")
    os.remove(os.path.join(bench, "images", "t1", "o2.jpg"))  # the image of line 2
    with pytest.raises(RecordError) as info:
        main.run(c)
    assert info.value.path == os.path.join(bench, "visual_same_view.jsonl") and info.value.line == 2
    assert "visual_same_view.jsonl:2: field 'stage_to_estimate': image file not found" in str(info.value)
    assert "eval_pending" not in str(info.value)
    assert os.listdir(tmp) == []


def test_predictions_of_another_model_or_settings_are_refused_or_replaced(config, caplog):
    """Every line records what made it (made_by); a resume with another model seed, sampling setting
    or an unrecorded origin is refused in one line, nothing changed; eval.overwrite starts anew."""
    from progress_jax.eval.provenance import PredictionsMismatch

    c, keys = config
    c.eval.out_dir = out = os.path.join(c.workdir, "out")
    main.run(c)
    pred_path = os.path.join(out, "predictions.jsonl")
    first = open(pred_path).read()
    made_by = {o["made_by"] for o in read_lines(pred_path)}
    assert len(made_by) == 1 and json.load(open(os.path.join(out, "provenance.json")))["made_by"] in made_by

    c.sampling.temperature = 0.7
    with pytest.raises(PredictionsMismatch, match=r"predictions.jsonl holds 5 predictions made with other weights or "
                                                  r"settings \(sampling: .*\"temperature\": 0.0.* then, .*0.7.* now\)"):
        main.run(c)
    c.sampling.temperature = 0.0
    c.seed = 1  # another random model
    with pytest.raises(PredictionsMismatch, match=r"weights: .*\"seed\": 0.* then"):
        main.run(c)
    c.seed = 0
    with open(pred_path, "w") as f:  # copied from elsewhere: no record of what made them
        f.writelines(json.dumps({k: v for k, v in o.items() if k != "made_by"}) + "\n" for o in json.loads(
            "[" + ",".join(first.splitlines()) + "]"))
    with pytest.raises(PredictionsMismatch, match="made by a model and settings it does not record"):
        main.run(c)
    assert "made_by" not in open(pred_path).read()  # refused: left as it was

    c.eval.overwrite = True
    caplog.set_level(logging.INFO, logger="progress_jax")
    caplog.clear()
    main.run(c)
    assert "5 of 5 samples to predict" in caplog.text
    assert open(pred_path).read() == first  # the same model and settings again: the same answers


def test_unwritable_out_dir_leaks_nothing(no_model, tmp_path):
    c, tmp = no_model
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    c.eval.out_dir = str(blocker / "out")
    from progress_jax.errors import UserError

    with pytest.raises(UserError, match=f"cannot create the run directory {blocker / 'out'}: Not a directory"):
        main.run(c)
    assert os.listdir(tmp) == []


def test_empty_bench_file_is_refused_before_anything_is_written(no_model):
    c, _ = no_model
    open(os.path.join(c.data.bench_dir, "visual_cross_view.jsonl"), "w").close()
    with pytest.raises(ValueError, match=r"visual_cross_view.jsonl: no benchmark samples"):
        main.run(c)
    assert not os.path.exists(c.workdir) or os.listdir(c.workdir) == []
