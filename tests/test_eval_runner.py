"""The eval job end to end on a four-sample benchmark built here: predictions, resume, metrics.json."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import eval as eval_config
from progress_jax import main, runtime

DEMO = ["f0.jpg", "f1.jpg", "f2.jpg"]
# Long enough that the text prompt falls in the visual prompts' length bucket: one compiled program.
STEPS = [f"move the gripper towards the drawer handle, slowly, step {i}" for i in range(1, 9)]


def vis(tid, obs, score, closest):
    return {"id": tid, "task_goal": "put the red cup on the plate", "visual_demo": DEMO, "total_steps": "2",
            "stage_to_estimate": [obs], "closest_idx": closest, "delta": "+5%" if score != "n/a" else "n/a",
            "progress_score": score, "data_source": "test"}


def write_bench(root) -> list[tuple[str, str, str]]:
    bench = {
        "visual_same_view": [vis("t1", "o1.jpg", "30%", "2"), vis("t1", "o2.jpg", "80%", "3")],
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
    load = runtime.load_model
    monkeypatch.setattr(runtime, "load_model", lambda cfg, mesh=None: built.setdefault("model", load(cfg, mesh)))
    return c, keys


def test_eval_job_predicts_resumes_and_scores(config, capsys):
    c, keys = config
    main.run(c)
    pred_path = os.path.join(c.workdir, "think", "predictions.jsonl")
    lines = read_lines(pred_path)
    assert sorted((o["setting"], o["id"], o["stage"]) for o in lines) == sorted(keys)
    assert all(isinstance(o["response"], str) and o["response"] for o in lines)
    out = capsys.readouterr().out
    assert "4 of 4 samples to predict" in out and "| tiny-random |" in out

    metrics = json.load(open(os.path.join(c.workdir, "think", "metrics.json")))
    assert set(metrics) == {"visual_same_view", "visual-unanswerable", "text-normal", "vision", "text", "micro", "macro"}
    assert metrics["visual_same_view"]["n"] == 2 and metrics["vision"]["n_answerable"] == 2
    assert {"nse", "prc", "afrr", "uda"} <= set(metrics["macro"])

    # A rerun predicts nothing; after dropping one line it predicts exactly that sample again.
    before = open(pred_path).read()
    main.run(c)
    assert open(pred_path).read() == before
    assert "0 of 4 samples to predict" in capsys.readouterr().out
    with open(pred_path, "w") as f:
        f.writelines(json.dumps(o) + "\n" for o in lines[1:])
    main.run(c)
    redone = read_lines(pred_path)
    assert len(redone) == 4 and redone[-1] == lines[0]


def test_missing_bench_dir_names_the_key(config):
    c, _ = config
    c.data.bench_dir = "/nonexistent/bench"
    with pytest.raises(FileNotFoundError, match="data.bench_dir"):
        main.run(c)
