"""Validation during training (train.val_*): the evaluation metrics on held-out benchmark files inside
SFT and GRPO, equal to what the eval job computes on the same files and trained weights, text samples
logged, before-train validation, the training losses unchanged, and the config keys checked."""

import glob
import json
import os
import struct

import pytest

from configs import eval as eval_config
from configs import grpo as grpo_config
from configs import sft as sft_config
from progress_jax import config_check, loading, main
from progress_jax.eval.predictions import load_bench
from progress_jax.train import curves, validation
from progress_jax.train.metrics_writer import MetricsWriter, Text, read_metrics
from tests.killable import write_records
from tests.test_eval_runner import write_bench

STEPS = 4
DATA = {"length_buckets": (512,), "patch_buckets": (128, 256, 512), "image_buckets": (8, 16, 32), "min_pixels": 3136,
        "max_pixels": 3136}


def toy_rewards(texts, records):
    """A reward that differs between rollouts of a random model (the GRPO run must move)."""
    return [{"overall": sum(map(ord, t)) % 97 / 97.0, "chars": float(len(t))} for t in texts]


@pytest.fixture
def data(tmp_path, monkeypatch):
    """SFT and RL records, a benchmark of five samples in three files, and one tiny model built once."""
    for name, answers in (("train", True), ("train_rl", False)):
        (tmp_path / name).mkdir()
        write_records(tmp_path / name, n=8, answers=answers)
    bench = tmp_path / "bench"
    bench.mkdir()
    write_bench(bench)
    built = {}
    load = loading.load_model

    def load_once(cfg, mesh=None):  # a fresh module on the same arrays: jobs inject LoRA into theirs
        from flax import nnx

        return nnx.merge(*nnx.split(built.setdefault("model", load(cfg, mesh))))

    monkeypatch.setattr(loading, "load_model", load_once)
    return tmp_path


def _common(c, workdir, bench):
    c.workdir = str(workdir)
    c.data.update(DATA)
    c.data.bench_dir = str(bench)
    c.lora.rank = 8
    c.train.steps = STEPS
    c.train.batch_size = c.train.micro_batch_size = 8
    c.train.save_every = 100
    c.sampling.batch_size = 4
    c.train.val_max_new_tokens = 8
    c.train.val_log_samples = 2


def sft_job(root, workdir, val=True):
    c = sft_config.get_config()
    _common(c, workdir, root / "bench")
    c.data.train_files = (str(root / "train" / "sft.jsonl"),)
    c.data.image_root = str(root / "train" / "images")
    c.train.demo_samples = 0
    if val:
        c.train.val_every = 2
        c.train.val_before_train = True
    return c


def tb_events(log_dir):
    """Every event of the TensorBoard files in log_dir, read from the TFRecord framing."""
    from tensorboardX.proto import event_pb2

    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents*"))):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            n = struct.unpack("<Q", data[i:i + 8])[0]
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            yield event


# Answers for the step-0 validation, written before the run (a validation resumes its predictions
# file, as the eval job does): a random model's 8 tokens are never parseable, these are, so that
# NSE, PRC and ref error are defined. (sample -> (ref, score))
ANSWERS = {("visual_same_view", 1): (2, 0.4), ("visual_same_view", 2): (3, 0.7), ("visual_same_view", 3): (2, 0.2),
           ("text-normal", 1): (1, 0.9), ("visual-unanswerable", 1): (1, 0.5)}


def seed_answers(config, bench):
    """Step 0's validation predictions, as a killed validation of this run left them (made_by: the
    provenance validation records, greedy with train.val_max_new_tokens)."""
    from progress_jax.eval import provenance
    from progress_jax.eval.metrics import Sample, compute_metrics
    from progress_jax.eval.predictions import prediction_line

    r = config.copy_and_resolve_references()
    r.sampling.temperature, r.sampling.max_new_tokens = 0.0, r.train.val_max_new_tokens
    made_by = provenance.digest(provenance.describe(r, {"in_memory": "step 0"}))

    samples, lines = [], []
    for records in bench.values():
        for r in records:
            ref, score = ANSWERS[(r.source, r.line)]
            text = (f"<ref_think>a</ref_think><ref>{ref}</ref><score_think>b</score_think>"
                    f"<score>{round(score * 100)}%</score>")
            lines.append({**prediction_line(r, text), "made_by": made_by})
            samples.append(Sample(r, score, ref))
    out = os.path.join(config.workdir, "val", "step_000000")
    os.makedirs(out)
    with open(os.path.join(out, "predictions.jsonl"), "w") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return compute_metrics(samples)


def assert_logged(got, expected):
    for entry, prefix in (("macro", "val"), ("vision", "val/vision"), ("text", "val/text")):
        for metric in ("nse", "prc", "afrr", "uda", "ref_error"):
            want = expected[entry][metric]
            if want is None:
                assert f"{prefix}/{metric}" not in got, (entry, metric)
            else:
                assert abs(got[f"{prefix}/{metric}"] - want) <= 1e-6, (entry, metric, want)


@pytest.mark.heavy
def test_sft_validation_equals_the_eval_job_and_leaves_the_losses_alone(data):
    ran = sft_job(data, data / "val")
    step0 = seed_answers(ran, load_bench([data / "bench"]))
    assert None not in (step0["macro"]["nse"], step0["vision"]["prc"], step0["macro"]["uda"])
    main.run(ran)
    history = read_metrics(ran.workdir)
    # Before training (step 0), every val_every steps: the same benchmark samples each time.
    assert [s for s in sorted(history) if "val/afrr" in history[s]] == [0, 2, 4]
    assert_logged(history[0], step0)
    for s in (0, 2, 4):
        m = history[s]
        assert {"val/afrr", "val/uda", "val/vision/afrr", "val/text/afrr", "time/val_s"} <= set(m)
        assert os.path.isfile(os.path.join(ran.workdir, "val", f"step_{s:06d}", "predictions.jsonl"))

    # The losses of a run without validation: validation disturbs neither the RNG nor the data order.
    plain = sft_job(data, data / "plain", val=False)
    main.run(plain)
    reference = read_metrics(plain.workdir)
    assert sorted(reference) == [1, 2, 3, 4]
    for s in range(1, STEPS + 1):
        assert abs(history[s]["loss"] - reference[s]["loss"]) <= 1e-6, (s, history[s]["loss"], reference[s]["loss"])

    # The eval job on the same files and the run's final weights (greedy, the same answer length and
    # data settings) computes the metrics validation logged at the last step.
    e = eval_config.get_config()
    e.workdir = str(data / "eval")
    e.data.update(DATA)
    e.data.bench_dir = str(data / "bench")
    e.eval.trained = os.path.join(ran.workdir, "final")
    e.sampling.temperature = 0.0
    e.sampling.max_new_tokens = 8
    e.sampling.batch_size = 4
    main.run(e)
    assert_logged(history[STEPS], json.load(open(data / "eval" / "think" / "metrics.json")))
    # ... from the same answers: the same weights, prompts and greedy decoding.
    def answers(path):
        return sorted((p["setting"], p["line"], p["response"]) for p in map(json.loads, open(path)))

    assert answers(data / "eval" / "think" / "predictions.jsonl") == answers(
        os.path.join(ran.workdir, "val", f"step_{STEPS:06d}", "predictions.jsonl"))

    # Text samples: two per validation, round-robin over the files, in val_samples.jsonl and TensorBoard.
    rows = [json.loads(line) for line in open(os.path.join(ran.workdir, validation.SAMPLES_FILE))]
    assert [r["step"] for r in rows] == [0, 0, 2, 2, 4, 4]
    assert [r["setting"] for r in rows[:2]] == ["text-normal", "visual-unanswerable"]  # files in name order
    preds = {(p["setting"], p["line"]): p for p in map(json.loads, open(
        os.path.join(ran.workdir, "val", "step_000004", "predictions.jsonl")))}
    for r in rows[4:]:
        p = preds[(r["setting"], r["line"])]
        assert (r["response"], r["score"], r["ref"]) == (p["response"], p["score"], p["ref"])
    assert rows[1]["gt_score"] is None and rows[0]["gt_score"] == 0.5 and rows[0]["gt_ref"] == 1
    texts = {(e.step, v.tag): v.tensor.string_val[0].decode() for e in tb_events(ran.workdir)
             for v in e.summary.value if v.tag.startswith("val/samples")}
    assert sorted(s for s, _ in texts) == [0, 2, 4]
    step4 = [t for (s, _), t in texts.items() if s == 4][0]
    for r in rows[4:]:
        assert f"**{r['setting']}** id `{r['id']}`" in step4
        assert all(line in step4 for line in r["response"].split("\n"))
    # The training curves have the validation panels.
    assert {"val", "val/vision", "val/text"} <= {title for title, _ in curves.panels(curves.series(history))}


def grpo_job(root, workdir):
    c = grpo_config.get_config()
    c.job = "grpo"
    _common(c, workdir, root / "bench")
    c.data.train_files = (str(root / "train_rl" / "rl.jsonl"),)
    c.data.image_root = str(root / "train_rl" / "images")
    c.train.steps = 2
    c.grpo.rollout_batch_size = c.train.batch_size = 4
    c.grpo.n = 2
    c.sampling.max_new_tokens = 8
    c.grpo.reward = "tests.test_validation:toy_rewards"
    c.grpo.probe_every = 1
    c.grpo.probe_batches = 1
    return c


@pytest.mark.heavy
def test_grpo_validation_beside_the_probe_with_rewards(data):
    c = grpo_job(data, data / "grpo")
    c.train.val_every = 2
    c.train.val_samples = 3
    main.run(c)
    history = read_metrics(c.workdir)
    plain = grpo_job(data, data / "plain")  # no validation: the same rollouts, rewards and losses
    main.run(plain)
    for s, m in read_metrics(plain.workdir).items():
        for k in ("loss", "reward/overall", "probe/overall"):
            if k in m:
                assert abs(history[s][k] - m[k]) <= 1e-6, (s, k)
    assert "val/nse" not in history.get(0, {}) and "probe/overall" in history[0]  # no val_before_train
    assert "val/afrr" in history[2] and "probe/overall" in history[2] and "reward/overall" in history[2]
    rows = [json.loads(line) for line in open(os.path.join(c.workdir, validation.SAMPLES_FILE))]
    assert len(rows) == 2 and all(r["step"] == 2 for r in rows)
    # The logged reward is the run's reward of the logged answer.
    bench = {(r.source, r.line): r for records in load_bench([data / "bench"]).values() for r in records}
    for r in rows:
        assert r["reward"] == toy_rewards([r["response"]], [bench[(r["setting"], r["line"])]])[0]
    # A subset of 3 of the 5 samples, scored as such.
    scored = json.load(open(os.path.join(c.workdir, "val", "step_000002", "metrics.json")))
    assert scored["micro"]["n"] == 3


def _bench(sizes):
    """Records of files {stem: [trajectory sizes]}."""
    from data_pipeline.records import Record

    out = {}
    for stem, trajectories in sizes.items():
        records, line = [], 0
        for t, n in enumerate(trajectories):
            for _ in range(n):
                line += 1
                records.append(Record(stem, line, f"t{t}", "g", ("a.jpg",), None, 1, f"o{line}.jpg", 1, 0.5))
        out[stem] = records
    return out


def test_subset_is_fixed_proportional_and_keeps_trajectories():
    bench = _bench({"a": [5] * 20, "b": [4] * 10, "c": [2] * 5})  # 100, 40, 10 samples
    chosen = validation.subset(bench, 30)
    assert {k: len(v) for k, v in chosen.items()} == {"a": 20, "b": 8, "c": 2}
    assert chosen == validation.subset(bench, 30)  # the same subset every time
    for stem, records in chosen.items():
        assert [r.line for r in records] == sorted(r.line for r in records)
        ids = [r.id for r in records]
        assert len(set(ids)) == (4 if stem == "a" else 2 if stem == "b" else 1)  # whole trajectories
    assert validation.subset(bench, 0) is bench and validation.subset(bench, 500) is bench


def test_config_keys_are_checked_naming_the_key(data):
    c = sft_job(data, data / "run")
    for key, value, problem in (("val_every", -1, ">= 0"), ("val_samples", -10, ">= 0"),
                                ("val_max_new_tokens", -1, ">= 0"), ("val_files", ("",), "file paths"),
                                ("val_log_samples", -2, ">= 0")):
        bad = sft_job(data, data / "run")
        bad.train[key] = value
        with pytest.raises(config_check.ConfigError, match=f"config key train.{key} .*{problem}"):
            config_check.check(bad)
    c.train.val_every, c.train.val_before_train = 0, False
    c.train.val_files = (str(data / "bench" / "text-normal.jsonl"),)
    with pytest.raises(config_check.ConfigError, match="train.val_files is set, but train.val_every is 0"):
        config_check.check(c)
    for name in ("demo", "paper"):  # the shipped variants pass
        config_check.check(sft_config.get_config(name), runnable=False)
        config_check.check(grpo_config.get_config(name), runnable=False)


def test_missing_validation_images_are_refused_before_the_model_loads(data, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the validation files were checked")

    monkeypatch.setattr(loading, "load_model", refuse)
    c = sft_job(data, data / "run")
    c.train.val_image_root = str(data / "nowhere")
    with pytest.raises(FileNotFoundError, match="config key train.val_image_root: no image directory"):
        main.run(c)
    c.train.val_image_root = ""
    os.remove(data / "bench" / "images" / "t2" / "o1.jpg")
    with pytest.raises((FileNotFoundError, ValueError), match="o1.jpg"):
        main.run(c)


def test_text_metrics_go_to_tensorboard_not_to_the_jsonl(tmp_path):
    with MetricsWriter(str(tmp_path)) as w:
        w.write(3, {"val/nse": 12.5, "val/samples": Text("**a** sample")})
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert lines == [{"step": 3, "val/nse": 12.5}]
    texts = [v.tensor.string_val[0].decode() for e in tb_events(str(tmp_path)) for v in e.summary.value
             if v.tag.startswith("val/samples")]
    assert texts == ["**a** sample"]
