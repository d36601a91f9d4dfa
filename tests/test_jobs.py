"""Jobs read every input before any expensive work: a bad or empty input is refused naming the
config key and file, and nothing is written. Rewards and advantage estimators are looked up by name;
a user's own reward is a function plus a config value."""

import json
import os

import numpy as np
import pytest

from configs import eval as eval_config
from configs import grpo as grpo_config
from progress_jax import loading, main
from progress_jax.train import grpo_loss, registry
from tests.killable import write_records


def length_reward(responses, records):
    """A user's own reward: longer answers score higher."""
    return [{"overall": min(len(r), 100) / 100.0, "chars": float(len(r))} for r in responses]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model is the expensive step: it must not be reached."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")
    monkeypatch.setattr(loading, "load_model", refuse)


def grpo_job(tmp_path, train_file):
    c = grpo_config.get_config()
    c.job = "grpo"
    c.workdir = str(tmp_path / "run")
    c.data.train_files = (str(train_file),)
    c.data.image_root = str(tmp_path / "images")
    return c


def test_grpo_refuses_an_empty_rl_file_before_loading_anything(tmp_path, no_model):
    empty = tmp_path / "rl.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=f"data.train_files: {empty} holds no records"):
        main.run(grpo_job(tmp_path, empty))
    assert not (tmp_path / "run").exists()


def test_grpo_refuses_a_missing_image_naming_file_and_line(tmp_path, no_model):
    write_records(tmp_path, n=3, answers=False)
    os.remove(tmp_path / "images" / "traj1" / "obs.jpg")
    with pytest.raises(ValueError, match=r"rl\.jsonl.*\b2\b") as err:
        main.run(grpo_job(tmp_path, tmp_path / "rl.jsonl"))
    assert "obs.jpg" in str(err.value)
    assert not (tmp_path / "run").exists()


def test_demo_checks_the_rl_file_before_the_warm_start(tmp_path, no_model):
    (tmp_path / "rl.jsonl").write_text("")
    c = grpo_config.get_config()  # the demo chain: SFT warm start first, unless the inputs are bad
    c.workdir = str(tmp_path / "run")
    c.data.train_files = (str(tmp_path / "rl.jsonl"),)
    with pytest.raises(ValueError, match="holds no records"):
        main.run(c)
    assert not (tmp_path / "run").exists()


def test_eval_refuses_an_empty_benchmark_file_before_loading_the_model(tmp_path, no_model):
    bench = tmp_path / "bench"
    (bench / "images").mkdir(parents=True)
    (bench / "visual_same_view.jsonl").write_text("")
    c = eval_config.get_config()
    c.data.bench_dir = str(bench)
    c.workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match="visual_same_view.jsonl: no benchmark samples in this file"):
        main.run(c)
    assert not (tmp_path / "run").exists()


def test_eval_refuses_a_missing_trained_run_before_loading_the_model(tmp_path, no_model):
    from tests.test_eval_runner import write_bench

    bench = tmp_path / "bench"
    bench.mkdir()
    write_bench(bench)
    c = eval_config.get_config()
    c.data.bench_dir = str(bench)
    c.eval.trained = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="trainable.json"):
        main.run(c)


def test_a_users_reward_is_a_function_plus_a_config_value():
    fn = registry.get_reward("tests.test_jobs:length_reward")
    rec = _record(closest_idx=1, progress=0.5, n_demos=2)
    assert fn(["ab", "abcd"], [rec, rec]) == length_reward(["ab", "abcd"], [rec, rec])
    assert fn(["ab", "abcd"], [rec, rec])[1]["overall"] == 0.04


def nan_reward(responses, records):
    return [{"overall": float("nan") if r == "bad" else 1.0} for r in responses]


def short_reward(responses, records):
    return [{"overall": 1.0}]


def test_a_users_reward_that_returns_nan_or_too_few_values_is_an_error():
    rec = _record(closest_idx=1, progress=0.5, n_demos=2)
    fn = registry.get_reward("tests.test_jobs:nan_reward")
    assert fn(["ok"], [rec]) == [{"overall": 1.0}]
    with pytest.raises(ValueError, match=r"reward tests.test_jobs:nan_reward: response 1 got overall=nan"):
        fn(["ok", "bad"], [rec, rec])
    with pytest.raises(ValueError, match="expected a list of 2 dicts"):
        registry.get_reward("tests.test_jobs:short_reward")(["a", "b"], [rec, rec])


def test_builtin_rewards_by_name_score_like_the_reward_module():
    from progress_jax import rewards

    paper = registry.get_reward("paper")
    good = "<ref_think>x</ref_think><ref>2</ref><score_think>y</score_think><score>50%</score>"
    rec = _record(closest_idx=2, progress=0.5, n_demos=3)
    expected = rewards.progress_rewards([good], [2], [0.5], [3], variant="paper")
    assert paper([good], [rec]) == expected
    with pytest.raises(ValueError, match="grpo.reward: unknown reward 'nope'"):
        registry.get_reward("nope")


def _record(closest_idx, progress, n_demos):
    """A benchmark record parsed from its JSON line, as the data pipeline hands it to the reward."""
    from data_pipeline.records import parse_record

    obj = {"id": "t", "task_goal": "g", "visual_demo": [f"d{i}.jpg" for i in range(n_demos)],
           "total_steps": str(n_demos - 1), "stage_to_estimate": ["o.jpg"], "closest_idx": str(closest_idx),
           "delta": "+5%", "progress_score": f"{round(progress * 100)}%", "data_source": "test"}
    return parse_record(json.loads(json.dumps(obj)), "visual", "rl.jsonl", 1)


def test_advantage_estimators_by_name():
    r = np.array([1.0, 0.0, 0.5, 0.5], np.float32)
    np.testing.assert_allclose(registry.get_advantage("drgrpo")(r, 2), [0.5, -0.5, 0.0, 0.0], atol=1e-6)
    g = np.asarray(registry.get_advantage("grpo")(r, 2))
    np.testing.assert_allclose(g[:2], [0.5 / (np.std([1, 0], ddof=1) + 1e-6), -0.5 / (np.std([1, 0], ddof=1) + 1e-6)],
                               rtol=1e-5)
    assert set(grpo_loss.ADVANTAGES) == {"grpo", "drgrpo"}
    with pytest.raises(ValueError, match="grpo.advantage: unknown advantage estimator 'ppo'"):
        registry.get_advantage("ppo")
