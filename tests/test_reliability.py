"""No tool writes over one of its inputs: each output flag pointed at an input (the same path, or a
symlink to it) is refused before any work, naming both, and the input is left as it was."""
import json
import os
import re

import pytest

from tests.test_review_app import make_queue


def _decisions(tmp_path, lines):
    path = tmp_path / "decisions.jsonl"
    path.write_text("".join(json.dumps({"key": e["key"], "decision": "keep"}) + "\n" for e in lines))
    return str(path)


@pytest.mark.parametrize("target", ["--decisions", "--queue"])
@pytest.mark.parametrize("link", [False, True])
def test_review_apply_refuses_out_on_its_inputs(tmp_path, target, link):
    from tools import review_app

    queue, lines = make_queue(tmp_path)
    decisions = _decisions(tmp_path, lines)
    victim = decisions if target == "--decisions" else queue
    out = victim
    if link:
        out = str(tmp_path / "link.jsonl")
        os.symlink(victim, out)
    before = open(victim, "rb").read()
    with pytest.raises(SystemExit, match=re.escape(f"--out {out} is the input {target} {victim}")):
        review_app.main(["apply", "--queue", queue, "--decisions", decisions, "--out", out])
    assert open(victim, "rb").read() == before


def test_review_serve_refuses_decisions_on_the_queue(tmp_path):
    from tools import review_app

    queue, _ = make_queue(tmp_path)
    before = open(queue, "rb").read()
    with pytest.raises(SystemExit, match=re.escape(f"--decisions {queue} is the input --queue {queue}")):
        review_app.main(["serve", "--queue", queue, "--decisions", queue])
    assert open(queue, "rb").read() == before


def test_generate_cot_refuses_out_on_records(tmp_path):
    from tools import generate_cot

    records = tmp_path / "train.jsonl"
    records.write_text('{"id": "x"}\n')
    for argv, match in ((["--out", str(records)], "--out .* is the input --records"),
                        (["--out", str(tmp_path / "o.jsonl"), "--rejects", str(records)], "--rejects .* is the input --records"),
                        (["--out", str(tmp_path / "o.jsonl"), "--rejects", str(tmp_path / "o.jsonl")],
                         "--rejects .* and --out .* are the same file")):
        with pytest.raises(SystemExit, match=match):
            generate_cot.main(["--records", str(records), "--image-root", str(tmp_path), "--backend", "jax", *argv])
    assert records.read_text() == '{"id": "x"}\n'


def test_make_unanswerable_refuses_outputs_on_inputs(tmp_path):
    from tools import make_unanswerable

    records = tmp_path / "normal.jsonl"
    records.write_text('{"id": "x"}\n')
    queue = tmp_path / "queue.jsonl"
    queue.write_text('{"key": "k"}\n')
    with pytest.raises(SystemExit, match="--out .*normal.jsonl is the input --records"):
        make_unanswerable.main(["text", "--records", str(records), "--image-root", str(tmp_path), "--out", str(records),
                                "--backend", "jax"])
    with pytest.raises(SystemExit, match="--out .*queue.jsonl and --queue .*queue.jsonl are the same file"):
        make_unanswerable.main(["image", "--records", str(records), "--image-root", str(tmp_path), "--queue", str(queue),
                                "--out", str(queue), "--backend", "jax", "--editor", "sim"])
    assert records.read_text() == '{"id": "x"}\n' and queue.read_text() == '{"key": "k"}\n'


def test_score_predictions_refuses_an_output_file_that_is_the_predictions(tmp_path):
    from tools import score_predictions

    bench = tmp_path / "bench.jsonl"
    bench.write_text("")
    pred = tmp_path / "metrics.json"  # an unlucky name: the scorer writes OUT/metrics.json
    pred.write_text('{"id": "x"}\n')
    with pytest.raises(SystemExit, match="metrics.json is the input --pred"):
        score_predictions.main(["--bench", str(bench), "--pred", str(pred), "--out", str(tmp_path)])
    assert pred.read_text() == '{"id": "x"}\n'


@pytest.mark.parametrize("line", ["5", "null", '"keep"', "[1, 2]"])
def test_a_decision_line_that_is_not_an_object_names_file_and_line(tmp_path, line):
    from data_construction.unanswerable import load_decisions

    queue, lines = make_queue(tmp_path)
    path = tmp_path / "decisions.jsonl"
    path.write_text(json.dumps({"key": lines[0]["key"], "decision": "keep"}) + "\n\n" + line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: expected a JSON object")):
        load_decisions(str(path))
    from tools import review_app  # the command: that one line, no traceback

    with pytest.raises(SystemExit, match=re.escape(f"{path}:3: expected a JSON object")):
        review_app.main(["apply", "--queue", queue, "--decisions", str(path), "--out", str(tmp_path / "out.jsonl")])
    assert not (tmp_path / "out.jsonl").exists()


def test_a_hard_link_to_an_input_is_the_same_file(tmp_path):
    from data_pipeline.paths import check_outputs

    src = tmp_path / "in.jsonl"
    src.write_text("{}\n")
    os.link(src, tmp_path / "hard.jsonl")
    with pytest.raises(SystemExit, match="--out .*hard.jsonl is the input --records .*in.jsonl"):
        check_outputs({"--out": str(tmp_path / "hard.jsonl")}, {"--records": [str(tmp_path / "other.jsonl"), str(src)]})
    check_outputs({"--out": str(tmp_path / "new.jsonl"), "--rejects": None}, {"--records": [str(src)]})  # fine


@pytest.mark.heavy
def test_sft_resume_refuses_a_changed_config_and_falls_back_past_a_damaged_checkpoint(tmp_path):
    """The SFT job as a subprocess: 4 steps (checkpoints 2 and 4); the data of step 4 lost; a rerun
    with another LoRA rank or param dtype is refused naming the key (nothing moved); the same
    config resumes from step 2, with step 4 moved aside."""
    from tests.killable import finish, metrics, run_to_end, start, write_records
    from tests.test_sft_resume import command

    def cmd(steps, *extra):
        return [a for a in command(tmp_path, tmp_path / "run") if not a.startswith("--config.train.steps=")] + [
            f"--config.train.steps={steps}", *extra]

    write_records(tmp_path)
    run_to_end(cmd(4))
    ckpt = tmp_path / "run" / "checkpoints"
    chunks = [p for p in (ckpt / "4").glob("state/**/d/*") if p.is_file()]
    for p in chunks:  # every data file: whichever ones hold the arrays
        p.unlink()
    for flag, message in (("--config.lora.rank=16", "lora.rank: 8 in the checkpoint, 16 now"),
                          ("--config.model.param_dtype=bfloat16",
                           "model.param_dtype: 'float32' in the checkpoint, 'bfloat16' now")):
        stderr = finish(start(cmd(6, flag)), code=1)  # one after the other: the run directory's lock
        assert message in stderr, stderr[-3000:]
        assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: "), stderr[-3000:]
        assert "new workdir" in stderr
    assert sorted(os.listdir(ckpt)) == ["2", "4"]
    done = run_to_end(cmd(6))
    assert "checkpoint step 4 is damaged" in done.stderr and "resuming from step 2" in done.stderr
    assert "Event loop is closed" not in done.stderr
    assert {"4.damaged", "6"} <= set(os.listdir(ckpt))
    assert max(metrics(tmp_path / "run")) == 6


def _job_error(cmd):
    import subprocess

    from tests.killable import ENV, ROOT

    done = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    return done.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("case", ["missing", "empty"])
def test_a_missing_or_empty_training_file_is_one_line(tmp_path, case):
    from tests.killable import write_records
    from tests.test_sft_resume import command

    write_records(tmp_path)
    bad = tmp_path / "train.jsonl"
    if case == "empty":
        bad.write_text("\n")
    last = _job_error(command(tmp_path, tmp_path / "run") + [f"--config.data.train_files=('{bad}',)"])
    assert last == (f"error: config key data.train_files: no file {bad}" if case == "missing" else
                    f"error: config key data.train_files: {bad} holds no records")


def test_eval_trained_given_a_run_directory_names_its_final(tmp_path):
    import sys

    from progress_jax import handover
    from tests.killable import ROOT, write_records

    write_records(tmp_path)
    run = tmp_path / "runs" / "grpo"
    os.makedirs(run / "final")
    (run / "final" / handover.TRAINABLE_META).write_text("{}")
    last = _job_error([sys.executable, "-m", "progress_jax.main", "--config", os.path.join(ROOT, "configs/eval.py"),
                       f"--config.eval.out_dir={tmp_path / 'out'}", f"--config.eval.trained={run}",
                       f"--config.eval.bench_files=('{tmp_path / 'sft.jsonl'}',)",
                       f"--config.data.image_root={tmp_path / 'images'}"])
    assert last == f"error: no {handover.TRAINABLE_META} in {run}; give {run / 'final'}, the run's final/"


@pytest.mark.parametrize("code", ["ENOSPC", "EROFS", "EACCES"])
def test_a_full_disk_or_read_only_path_ends_a_job_in_one_line(tmp_path, capsys, caplog, monkeypatch, code):
    """errors.one_line (the jobs' entry): a full disk or a path it may not write, also raised from
    inside a library, is one line naming the file, exit status 1; other OSErrors keep their traceback.
    A checkpoint save failing so (inside Orbax's background threads; before: dozens of tracebacks,
    the cause mid-log) is one line naming the directory, the step and the error, and the previous
    checkpoint stays as it was."""
    import errno
    import logging

    import jax.numpy as jnp
    from etils import epath

    from progress_jax import errors
    from progress_jax.train import checkpoint

    number = getattr(errno, code)

    def save():
        try:
            raise OSError(number, os.strerror(number), "runs/sft/checkpoints/4/state/d/0")
        except OSError as e:
            raise RuntimeError("checkpoint write failed") from e

    with pytest.raises(SystemExit) as e:
        errors.one_line(save)
    assert e.value.code == 1
    assert capsys.readouterr().err == (f"error: runs/sft/checkpoints/4/state/d/0: {os.strerror(number)}\n")
    with pytest.raises(FileNotFoundError):  # not a condition of the disk: a bug's traceback
        errors.one_line(open, "/nonexistent/x")

    directory = str(tmp_path / "checkpoints")
    state = {"w": jnp.arange(16.0).reshape(4, 4)}
    ckpt = checkpoint.Checkpointer(directory, save_every=1, keep=1)
    ckpt.save(1, state, {"pos": 1})
    ckpt.wait()

    def refuse(path, *args, **kwargs):
        raise OSError(number, os.strerror(number), str(path))

    monkeypatch.setattr(epath.Path, "write_text", refuse)  # every metadata file of the next save

    def train():
        ckpt.save(2, {"w": state["w"] + 1}, {"pos": 2})
        ckpt.wait()  # the loop's end: the asynchronous save's error surfaces here

    with pytest.raises(SystemExit) as e:
        errors.one_line(train)
    assert e.value.code == 1
    assert capsys.readouterr().err == (
        f"error: cannot write checkpoint step 2 in {directory}: {os.strerror(number)} ({code}); step 1, the newest "
        "complete checkpoint, is left as it was; free the space (or fix the permissions) and rerun the same "
        "command to resume\n")
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    ckpt.close()
    monkeypatch.undo()
    rerun = checkpoint.Checkpointer(directory, save_every=1, keep=1)  # checksums verified on restore
    step, restored, data, _ = rerun.restore_latest(checkpoint.abstract_like(state))
    assert (step, data) == (1, {"pos": 1}) and (restored["w"] == state["w"]).all()
    rerun.close()


def test_mesh_sizes_that_do_not_fit_name_the_config_keys():
    """Before: a ValueError traceback naming no config key."""
    import jax
    import ml_collections

    from progress_jax import distributed
    from progress_jax.errors import UserError

    n = jax.device_count()
    cfg = ml_collections.ConfigDict({"mesh": {"data": n + 2, "fsdp": -1, "tensor": 1}})
    with pytest.raises(UserError, match=re.escape(f"config keys mesh.data={n + 2}, mesh.fsdp=-1, mesh.tensor=1 do not "
                                                  f"fit the {n} devices ({n} devices not divisible by {n + 2})")):
        distributed.make_mesh(cfg)


def test_truncated_weights_end_a_job_in_one_line(tmp_path, capsys):
    """Before: the right message as the last line of a ValueError traceback."""
    import numpy as np

    from progress_jax import errors
    from progress_jax.models import safetensors_io

    path = tmp_path / "model.safetensors"
    safetensors_io.save_file({"w": np.ones((64, 64), np.float32)}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SystemExit) as e:
        errors.one_line(safetensors_io.open_checkpoint, str(tmp_path))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.startswith(f"error: {path}: tensor w (F32 [64, 64]) ends at data byte 16384")
    assert err.strip().endswith("truncated file (copy or convert it again)") and len(err.splitlines()) == 1


def _chat_file(d):
    """<d>/chat.jsonl: one SFT chat record whose image is `frames/a.jpg`, relative."""
    line = {"messages": [{"role": "user", "content": "<image>how far?"}, {"role": "assistant", "content": "50%"}],
            "images": ["frames/a.jpg"]}
    (d / "chat.jsonl").write_text(json.dumps(line) + "\n")
    return d / "chat.jsonl"


@pytest.mark.parametrize("case", ["no image root", "wrong image root", "array_record", "chat", "bad line"])
def test_training_images_not_found_are_one_line_before_the_run_directory_is_taken(tmp_path, monkeypatch, case):
    """Before: the job took the run directory, loaded the model and failed inside Grain ("image_root
    is required"), or with a RecordError traceback."""
    from configs import sft as sft_config
    from data_pipeline import array_record
    from progress_jax import main, run_lock
    from progress_jax.errors import BadInput
    from tests.killable import write_records

    write_records(tmp_path)
    train, root = tmp_path / "sft.jsonl", str(tmp_path / "images")
    expected = f"config key data.image_root={root + '-x'!r}: {train}:1: field 'visual_demo': image file not found: " \
               f"{root}-x/traj0/d0.jpg"
    if case == "no image root":
        root = ""
        expected = (f"config key data.image_root is empty, but {train}:1 names its images under it (traj0/obs.jpg, "
                    "...): --config.data.image_root=DIR, the folder holding <id>/<image>")
    elif case == "array_record":
        train = array_record.convert([str(train)], str(tmp_path / "shards"))[0]  # its entries name sft.jsonl
    elif case == "chat":
        train, root = _chat_file(tmp_path), ""
        expected = f"config key data.image_root='': {train}:1: field 'images': image file not found: frames/a.jpg"
    elif case == "bad line":
        train.write_text('{"id": 1\n' + train.read_text())
        expected = f"config key data.train_files: {train}:1: "
    c = sft_config.get_config()
    c.workdir = str(tmp_path / "run")
    c.data.train_files = (str(train),)
    c.data.image_root = root + "-x" if case in ("wrong image root", "array_record") else root
    monkeypatch.setattr(run_lock, "hold", lambda directory: pytest.fail("the run directory was taken first"))
    with pytest.raises(BadInput) as e:
        main.run(c)
    assert str(e.value).startswith(expected), str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_bad_line_past_the_first_of_a_training_file_is_one_line(tmp_path):
    """The full read of the training files (after the run directory is taken). Before: a RecordError traceback."""
    from progress_jax import data_files
    from progress_jax.errors import BadInput
    from tests.killable import write_records

    write_records(tmp_path)
    train = tmp_path / "sft.jsonl"
    bad = {**json.loads(train.read_text().splitlines()[0]), "progress_score": "150%"}
    train.write_text(train.read_text() + json.dumps(bad) + "\n")
    with pytest.raises(BadInput, match=re.escape(f"config key data.train_files: {train}:13: field 'progress_score'")):
        data_files.check_train_files([str(train)], str(tmp_path / "images"))
