"""The learning regression test: the nano SFT weights in weights/sim_nano_sft answer a fixed part of
ProgressBench-Sim nano's test split as well as when they were measured. Trained weights are kept out
of git: made by the commands of docs/learning.md ("The learning regression test"), skipped without them.

A change that breaks the image path, the prompts, the M-RoPE positions, the tokenizer or the loading
of trained weights can leave every unit test green; here the answers stop following the observation
(vision PRC undefined or low, vision NSE up) or stop refusing the unanswerable text samples. The
bounds are the measured values with a margin (docs/learning.md, "The learning regression test")."""

import json
import os

import pytest

from configs import eval as eval_config
from data_construction.sim.build import plan_bench
from data_construction.construct import to_record, write_images
from data_pipeline.jsonl import write_jsonl
from progress_jax import main

WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "weights", "sim_nano_sft")
# The first trajectories of these test-split files, 104 samples. The visual-unanswerable file is left
# out while the weights answer none of it with n/a (docs/learning.md).
TRAJECTORIES = {"visual_same_view": 6, "visual_cross_view": 6, "text-normal": 4, "text-unanswerable": 4}


def write_test_part(root, data) -> list[str]:
    """The first TRAJECTORIES of the test split of the sim that config `data` generates (nano, sim
    seed 0, 112 px), written under root."""
    files = []
    for stem, samples in plan_bench(data.sim_size, data.sim_seed, data.sim_image_size).items():
        if stem not in TRAJECTORIES:
            continue
        first = list(dict.fromkeys(s.episode.id for s in samples))[:TRAJECTORIES[stem]]
        samples = [s for s in samples if s.episode.id in first]
        write_images(samples, os.path.join(root, "images"))
        files.append(os.path.join(root, f"{stem}.jsonl"))
        write_jsonl(files[-1], [to_record(s) for s in samples])
    return files


@pytest.mark.heavy
@pytest.mark.skipif(not os.path.isfile(os.path.join(WEIGHTS, "trainable.safetensors")),
                    reason=f"no trained weights in {WEIGHTS}: make them with the commands in docs/learning.md, "
                           "\"The learning regression test\"")
def test_trained_weights_still_estimate_progress(tmp_path):
    c = eval_config.get_config("nano")
    c.eval.bench_files = tuple(write_test_part(tmp_path / "bench", c.data))
    c.data.image_root = str(tmp_path / "bench" / "images")
    c.eval.trained = WEIGHTS
    c.workdir = str(tmp_path / "run")
    main.run(c)
    m = json.load(open(tmp_path / "run" / "think" / "metrics.json"))
    assert m["coverage"]["matched"] == 104
    vision, text = m["vision"], m["text"]
    # Measured (docs/learning.md): vision NSE 32.5, PRC 62.8; text PRC 77.5, UDA 93.8. Blanking every
    # observation (eval.blank_observation) leaves PRC undefined (one answer per trajectory).
    assert vision["prc"] is not None and vision["prc"] >= 30, vision
    assert vision["nse"] <= 36, vision
    assert text["prc"] is not None and text["prc"] >= 30, text
    assert text["uda"] >= 80, text
