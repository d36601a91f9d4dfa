"""Seeded random corruption of valid benchmark, RL, SFT chat, predictions and official result files:
every outcome is a clean load, a counted skip, or the project's own error type naming the file and
line; never another exception, never a line dropped without a count."""
import json
import random

import pytest

from data_pipeline.records import RecordError, read_chat_records, read_records
from progress_jax.eval.predictions import PredictionError, load_bench, read_predictions, score
from tools import check_data

VIS = {"id": "t1", "task_goal": "stack the cups", "visual_demo": ["f0.jpg", "f1.jpg", "f2.jpg"], "total_steps": "2",
       "stage_to_estimate": ["o1.jpg"], "closest_idx": "2", "delta": "+5%", "progress_score": "60%",
       "data_source": "sim", "camera_combination": "camera_left+camera_top"}
TXT = {"id": "t2", "task_goal": "open the drawer", "text_demo": ["[left] grasp the handle", "pull"], "total_steps": 2,
       "stage_to_estimate": "o2.jpg", "closest_idx": 1, "progress_score": "50%", "data_source": "sim"}
TXT_NA = dict(TXT, stage_to_estimate="o3.jpg", closest_idx="n/a", progress_score="n/a")
RL = dict(TXT, stage_to_estimate=["o4.jpg"], total_steps="2")  # raw_rl/text_positive_rl.jsonl's variant
HUMAN = dict(VIS, id="h1", progress_score="1.41%", closest_idx=1, total_steps=2)
CHAT = {"messages": [{"role": "system", "content": "You estimate progress."},
                     {"role": "user", "content": "Demo <image> 0%\nNow <image>"},
                     {"role": "assistant", "content": "<ref>1</ref><score>50%</score>"}],
        "images": ["t1/f0.jpg", "t1/o1.jpg"]}
PRED = {"setting": "bench", "id": "t1", "stage": "o1.jpg", "line": 1, "score": 0.5, "ref": 2}
PRED_TEXT = {"setting": "bench", "id": "t2", "stage": "o2.jpg",
             "response": "<ref_think>a</ref_think><ref>1</ref><score_think>b</score_think><score>40%</score>"}
RESULT = {"ref": "2", "score": "60%", "closest_idx": "2", "ground_truth_score": "60%", "ref_score": float("inf"),
          "response": "x", "meta_data": {**VIS, "stage_to_estimate": "/data/t1/o1.jpg", "progress_score": 0.6,
                                         "closest_idx": 2, "total_steps": 2, "status": "success"}}
RESULT_NOTHINK = {"predicted_score": "50%", "ground_truth_score": "50%", "response": "50%",
                  "meta_data": {"id": "t2", "stage_to_estimate": "o2.jpg", "progress_score": 0.5, "status": "success"}}

FILES = {
    "bench": [VIS, TXT, TXT_NA, HUMAN],
    "rl": [RL, TXT, TXT_NA],
    "chat": [CHAT, CHAT],
    "predictions": [PRED, PRED_TEXT],
    "results": [RESULT, RESULT_NOTHINK],
}
N_MUTATIONS = 80  # per file kind: 400 in all, a few seconds
VALUES = [None, True, 0, -3, 7, 2.5, float("nan"), 1e308, 10**30, "", " ", "n/a", "NA", "x", "-11%", "130%",
          "1e999", [], [1], ["a"], ["a", "b"], {}, {"k": 1}, "\u0000", "<image>"]


def _paths(obj, prefix=()):
    """Every (container path) inside a decoded line, to drop or replace one value anywhere."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


def _mutate_obj(rng, obj, drop):
    obj = json.loads(json.dumps(obj))
    path = rng.choice(list(_paths(obj)))
    parent = obj
    for step in path[:-1]:
        parent = parent[step]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = rng.choice(VALUES)
    return obj


def mutate(rng, lines) -> bytes:
    kind = rng.choice(["drop", "type", "type", "truncate", "junk", "bom", "blank", "swap", "empty", "nonobject"])
    objs = [json.loads(json.dumps(o)) for o in lines]
    i = rng.randrange(len(objs))
    if kind in ("drop", "type"):
        objs[i] = _mutate_obj(rng, objs[i], drop=kind == "drop")
    elif kind == "swap":
        objs[i], objs[-1] = objs[-1], objs[i]
    elif kind == "nonobject":
        objs[i] = rng.choice([[1, 2], "text", 3, None])
    data = "".join(json.dumps(o) + "\n" for o in objs).encode()
    if kind == "truncate":
        data = data[:rng.randrange(len(data))]
    elif kind == "junk":
        at = rng.randrange(len(data))
        data = data[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 6))) + data[at:]
    elif kind == "bom":
        data = b"\xef\xbb\xbf" + data if rng.random() < 0.7 else data.replace(b"\n", b"\n\xef\xbb\xbf", 1)
    elif kind == "blank":
        data = data.replace(b"\n", b"\n  \r\n\n", 1)
    elif kind == "empty":
        data = b"" if rng.random() < 0.5 else b"\n\n"
    return data


def _line_count(data: bytes) -> int:
    return data.count(b"\n") + 1


def _non_blank(data: bytes) -> int:
    return sum(1 for raw in data.split(b"\n") if raw.strip())


def check_error(e, path, data):
    assert e.path == str(path), e
    assert 1 <= e.line <= _line_count(data), e
    assert f"{path}:{e.line}" in str(e)


def load(kind, path, data, bench):
    if kind in ("bench", "rl", "chat"):
        read = read_chat_records if kind == "chat" else read_records
        try:
            items, skipped = read(path)
        except RecordError as e:
            check_error(e, path, data)
            return
        # nothing dropped silently: each non-blank line is loaded or counted as skipped
        assert len(items) + len(skipped) == _non_blank(data)
        for e in skipped:
            check_error(e, path, data)
        if kind != "chat" and items:
            result = score({path.stem: items}, [])
            assert result.report.n_bench == len(items)
        return
    try:
        pf = read_predictions(path, bench)
    except PredictionError as e:
        check_error(e, path, data)
        return
    except ValueError as e:  # a predictions file corrupted into looking like a result file, read without bench
        pytest.fail(f"{type(e).__name__}: {e}")
    assert len(pf.lines) + len(pf.unmatched) + (pf.truncated_line is not None) == _non_blank(data)
    score(bench, [obj for _, obj in pf.lines])


@pytest.mark.parametrize("kind", list(FILES))
def test_random_corruption(tmp_path, kind):
    bench_path = tmp_path / "bench.jsonl"
    bench_path.write_text("".join(json.dumps(o) + "\n" for o in FILES["bench"]))
    bench = load_bench([bench_path])
    rng = random.Random(f"mutation-{kind}")
    args = check_data.argparse.Namespace(image_root=None, length_buckets=None, patch_buckets=None, mode="think")
    for n in range(N_MUTATIONS):
        data = mutate(rng, FILES[kind])
        path = tmp_path / f"{kind}_{n}.jsonl"
        path.write_bytes(data)
        try:
            load(kind, path, data, bench)
            summary = check_data.check_file(str(path), args)
            assert summary["lines"] == _non_blank(data)
        except AssertionError:
            raise
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"mutation {n} of {kind} ({data[:300]!r}...): {type(e).__name__}: {e}")


N_CHECKPOINT_MUTATIONS = 30


def test_random_checkpoint_damage(tmp_path):
    """Seeded random damage (bytes flipped, a file cut short or emptied) to any file of the newest
    checkpoint: the restore gives that step bit-exactly, or names the damage and gives the previous
    step bit-exactly; never other numbers or another data position, never another exception."""
    import shutil

    from progress_jax.train.checkpoint import Checkpointer, abstract_like
    from tests.test_checkpoint import assert_bit_equal, big_state

    states = {2: big_state(0), 4: big_state(1)}
    base = tmp_path / "base"
    with Checkpointer(str(base), save_every=1, keep=5, async_save=False) as ckpt:
        for step, state in states.items():
            ckpt.save(step, state, f"data {step}".encode())
    rng = random.Random("mutation-checkpoint")
    for n in range(N_CHECKPOINT_MUTATIONS):
        run = tmp_path / f"run{n}"
        shutil.copytree(base, run)
        victim = rng.choice(sorted(p for p in (run / "4").rglob("*") if p.is_file()))
        data = bytearray(victim.read_bytes())
        kind = rng.choice(["flip", "flip", "flip", "truncate", "empty"])
        if kind == "flip" and data:
            at = rng.randrange(len(data))
            for i in range(at, min(at + rng.randint(1, 64), len(data))):
                data[i] ^= rng.randint(1, 255)
        elif kind == "truncate":
            data = data[:rng.randrange(len(data) + 1)]
        else:
            data = bytearray()
        victim.write_bytes(bytes(data))
        what = f"mutation {n}: {kind} {victim.relative_to(run)}"
        try:
            with Checkpointer(str(run), save_every=1, keep=5) as ckpt:
                step, state, data_state, _ = ckpt.restore_latest(abstract_like(states[2]))
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{what}: {type(e).__name__}: {e}")
        assert step in states, what
        assert data_state == f"data {step}".encode(), what
        assert_bit_equal(state, states[step])


def test_random_corruption_of_prediction_provenance(tmp_path):
    """Seeded random corruption of a predictions file whose lines record what made them: a resume
    by the same model and settings either accepts it, every line then carrying its made_by, or is
    refused with the one-line PredictionsMismatch (or the file's PredictionError); never another
    exception, never a resume over lines of another or unknown origin."""
    from configs import eval as eval_config
    from progress_jax.eval import provenance

    config = eval_config.get_config().copy_and_resolve_references()
    description = provenance.describe(config, {"model": provenance.model_identity(config), "trained": None})
    made_by = provenance.digest(description)
    lines = [dict(PRED, made_by=made_by), dict(PRED_TEXT, made_by=made_by), dict(PRED, stage="o2.jpg", made_by=made_by)]
    rng = random.Random("mutation-provenance")
    outcomes = set()
    for n in range(N_MUTATIONS):
        data = mutate(rng, lines)
        path = tmp_path / f"predictions_{n}.jsonl"
        path.write_bytes(data)
        try:
            objs = [obj for _, obj in read_predictions(path).lines]
            provenance.check_resume(str(tmp_path), objs, description, overwrite=False)
        except PredictionError as e:
            check_error(e, path, data)
            outcomes.add("bad line")
            continue
        except provenance.PredictionsMismatch as e:
            assert any(obj.get("made_by") != made_by for obj in objs), (n, data)
            assert "--config.eval.overwrite" in str(e)
            outcomes.add("refused")
            continue
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"mutation {n} ({data[:300]!r}...): {type(e).__name__}: {e}")
        assert all(obj["made_by"] == made_by for obj in objs), (n, data)
        outcomes.add("resumed")
    assert outcomes == {"bad line", "refused", "resumed"}
