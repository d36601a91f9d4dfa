import json

import numpy as np
import pytest
from PIL import Image

from data_pipeline.array_record import convert
from data_pipeline.image_processor import preprocess
from data_pipeline.pipeline import ARRAY_KEYS, device_arrays, make_dataset
from data_pipeline.prompts import record_images, target_answer, tokenize_record
from data_pipeline.records import load_records
from data_pipeline.tokenizer import load_tokenizer

SIZES = [(56, 56), (56, 84), (84, 56)]
N_TRAJ, OBS_PER_TRAJ = 2, 3  # 12 samples: 6 visual, 6 text


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny visual and text record files with images on disk."""
    root = tmp_path_factory.mktemp("bench")
    images = root / "images"
    rng = np.random.default_rng(0)
    visual, text = [], []
    for t in range(N_TRAJ):
        tid = f"traj{t}"
        (images / tid).mkdir(parents=True)
        steps = 2 + t % 2
        frames = [f"f{i}.png" for i in range(steps + 1)]
        obs = [f"obs{j}.png" for j in range(OBS_PER_TRAJ)]
        for k, name in enumerate(frames + obs):
            h, w = SIZES[(t + k) % len(SIZES)]
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / tid / name)
        for j, o in enumerate(obs):
            answerable = j != 2
            common = {"id": tid, "task_goal": f"put block {t} on the plate", "total_steps": steps,
                      "stage_to_estimate": [o], "closest_idx": str(j + 1) if answerable else "n/a",
                      "progress_score": f"{25 * j}%" if answerable else "n/a"}
            response = (f"<ref_think>near {j + 1}</ref_think><ref>{j + 1 if answerable else 'n/a'}</ref>"
                        f"<score_think>same</score_think><score>{25 * j if answerable else 'n/a'}"
                        f"{'%' if answerable else ''}</score>")
            visual.append(dict(common, visual_demo=frames, response=response, total_steps=str(steps)))
            text.append(dict(common, text_demo=[f"step {i} of {tid}" for i in range(steps)], response=response))
    files = []
    for name, rows in (("visual_same_view", visual), ("text-normal", text)):
        path = root / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        files.append(str(path))
    return {"files": files, "image_root": str(images), "root": root}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def make(data, tok, **kw):
    args = dict(image_root=data["image_root"], tokenizer=tok, batch_size=4, length_buckets=(512, 1024),
                patch_buckets=(256, 512), image_buckets=(8, 24))
    args.update(kw)
    return make_dataset(kw.pop("files", data["files"]), **{k: v for k, v in args.items() if k != "files"})


def all_keys(batches):
    return [k for b in batches for k in b["keys"] if k is not None]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["keys"] == y["keys"]
        for k in ARRAY_KEYS:
            np.testing.assert_array_equal(x[k], y[k])


def test_batch_contents(data, tok):
    records = {r.key: r for f in data["files"] for r in load_records(f)}
    batches = list(make(data, tok, mode="think"))
    assert len(batches) == 3 and sorted(all_keys(batches)) == sorted(records)
    for batch in batches:
        B, L = batch["input_ids"].shape
        assert B == 4 and L in (512, 1024) and batch["pixel_values"].shape[0] in (256, 512)
        assert batch["pixel_values"].shape[1] == 1176 and batch["image_grid_thw"].shape[0] in (8, 24)
        for k in ARRAY_KEYS:
            assert batch[k].dtype == (np.float32 if k == "pixel_values" else np.int32)
        assert set(device_arrays(batch)) == set(ARRAY_KEYS)
        p = m = 0
        for b, key in enumerate(batch["keys"]):
            rec = records[key]
            assert batch["records"][b] == rec
            pixels, grids = preprocess(record_images(rec, data["image_root"]))
            want = tokenize_record(tok, rec, grids, "think", target_answer(rec, "think"))
            n = len(want.input_ids)
            np.testing.assert_array_equal(batch["input_ids"][b, :n], want.input_ids)
            np.testing.assert_array_equal(batch["loss_mask"][b, :n], want.loss_mask)
            assert (batch["attention_mask"][b, :n] == 1).all() and (batch["attention_mask"][b, n:] == 0).all()
            assert (batch["input_ids"][b, n:] == tok.pad_id).all() and (batch["loss_mask"][b, n:] == 0).all()
            np.testing.assert_array_equal(batch["pixel_values"][p:p + len(pixels)], pixels)
            np.testing.assert_array_equal(batch["image_grid_thw"][m:m + len(grids)], grids)
            p, m = p + len(pixels), m + len(grids)
        assert not batch["pixel_values"][p:].any() and not batch["image_grid_thw"][m:].any()


def test_generation_prompts_direct_mode(data, tok):
    (batch, *_) = list(make(data, tok, mode="direct", with_answers=False))
    assert batch["loss_mask"].sum() == 0
    for b in range(4):
        n = batch["attention_mask"][b].sum()
        assert tok.decode(batch["input_ids"][b, n - 3:n]) == "<|im_start|>assistant\n"


def test_shuffle_epochs_and_global_batches(data, tok):
    keys = all_keys(make(data, tok, seed=3, num_epochs=2))
    assert keys == all_keys(make(data, tok, seed=3, num_epochs=2))
    assert keys != all_keys(make(data, tok, seed=4, num_epochs=2))
    first, second = keys[:12], keys[12:]
    assert sorted(first) == sorted(second) and first != second  # each epoch a new permutation of all samples
    assert all_keys(make(data, tok, seed=3, num_epochs=1)) == first
    # One sample order for every batch size: the global batches (docs/multihost.md), the same in
    # every process, cut from one sequence.
    assert all_keys(make(data, tok, seed=3, batch_size=2)) == first == all_keys(make(data, tok, seed=3, batch_size=6))


def test_partial_batches(data, tok):
    batches = list(make(data, tok, batch_size=5, drop_remainder=False, shuffle=False))
    assert len(batches) == 3 and batches[-1]["keys"][2:] == [None] * 3
    last = batches[-1]
    assert last["input_ids"].shape[0] == 5 and last["attention_mask"][2:].sum() == 0
    assert len(list(make(data, tok, batch_size=5))) == 2  # drop_remainder: 10 of 12 used, logged


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_state(data, tok, workers):
    # The reference comes from 0 workers: worker processes must give the same batches, resumed or not.
    reference = list(make(data, tok, seed=1, num_epochs=2, batch_size=2))
    it = iter(make(data, tok, seed=1, num_epochs=2, batch_size=2, worker_count=workers))
    head = [next(it) for _ in range(5)]
    state = it.get_state()
    resumed = iter(make(data, tok, seed=1, num_epochs=2, batch_size=2, worker_count=workers))
    resumed.set_state(state)
    rest = list(resumed)
    assert_batches_equal(head + rest, reference)
    for i in (it, resumed):
        if hasattr(i, "close"):
            i.close()


def test_array_record_shards_match_jsonl(data, tok):
    shards = convert(data["files"], str(data["root"] / "ar"), num_shards=3, image_root=data["image_root"])
    assert len(shards) == 3
    from_jsonl = list(make(data, tok, seed=5, shuffle=False))
    from_shards = list(make(data, tok, files=shards, seed=5, shuffle=False))
    assert sorted(all_keys(from_jsonl)) == sorted(all_keys(from_shards))
    by_key = {k: (b, i) for b in from_jsonl for i, k in enumerate(b["keys"])}
    for batch in from_shards:
        for i, key in enumerate(batch["keys"]):
            ref_batch, j = by_key[key]
            n = ref_batch["attention_mask"][j].sum()
            assert batch["attention_mask"][i].sum() == n
            np.testing.assert_array_equal(batch["input_ids"][i, :n], ref_batch["input_ids"][j, :n])
            assert batch["records"][i] == ref_batch["records"][j]


def test_chat_file(data, tok, tmp_path):
    chat = tmp_path / "sft_chat.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Demo <image> 0%\n\nNow <image> {i}"},
                          {"role": "assistant", "content": "50%"}],
             "images": ["traj0/f0.png", "traj0/obs0.png"]} for i in range(4)]
    chat.write_text("\n".join(json.dumps(r) for r in rows))
    (batch,) = list(make(data, tok, files=[str(chat)]))
    assert batch["image_grid_thw"][:8].any(axis=1).sum() == 8
    for b in range(4):
        assert tok.decode(batch["input_ids"][b][batch["loss_mask"][b] == 1]) == "50%<|im_end|>"
    (prompts,) = list(make(data, tok, files=[str(chat)], with_answers=False))  # generation: the answer left out
    for b in range(4):
        text = tok.decode(prompts["input_ids"][b][prompts["attention_mask"][b] == 1])
        assert "50%" not in text and text.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_errors(data, tok):
    with pytest.raises(ValueError, match=r"patches, more than the largest bucket 64.*traj"):
        next(iter(make(data, tok, patch_buckets=(32, 64))))
    with pytest.raises(ValueError, match="divisible by 4"):
        make(data, tok, patch_buckets=(30,))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        make(data, tok, files=["nope.jsonl"])
    no_response = data["root"] / "plain.jsonl"
    rows = [json.loads(x) for x in open(data["files"][0])]
    no_response.write_text("\n".join(json.dumps({k: v for k, v in r.items() if k != "response"}) for r in rows))
    with pytest.raises(ValueError, match=r"plain:\d+: think-mode training needs a 'response'"):
        next(iter(make(data, tok, files=[str(no_response)])))
    assert len(list(make(data, tok, files=[str(no_response)], mode="direct"))) == 1


@pytest.mark.parametrize("stage, with_answers, mode", [("sft", True, "think"), ("eval", False, "direct"),
                                                       ("rl", False, "think")])
def test_official_layout(data, tok, stage, with_answers, mode):
    """Each stage's official prompt reaches the batches (stage None picks sft/eval from with_answers)."""
    records = {r.key: r for f in data["files"] for r in load_records(f)}
    kw = {} if stage != "rl" else {"stage": "rl"}
    batches = list(make(data, tok, mode=mode, layout="official", with_answers=with_answers, shuffle=False, **kw))
    for batch in batches:
        for b, key in enumerate(batch["keys"]):
            rec = records[key]
            _, grids = preprocess(record_images(rec, data["image_root"]))
            answer = target_answer(rec, mode) if with_answers else None
            want = tokenize_record(tok, rec, grids, mode, answer, layout="official", stage=stage)
            n = int(batch["attention_mask"][b].sum())
            np.testing.assert_array_equal(batch["input_ids"][b, :n], want.input_ids)
            np.testing.assert_array_equal(batch["loss_mask"][b, :n], want.loss_mask)
    interleaved = list(make(data, tok, mode=mode, with_answers=with_answers, shuffle=False, **kw))
    assert any(not np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, interleaved))


def test_layout_errors_name_the_key(data, tok):
    with pytest.raises(ValueError, match="data.prompt must be one of"):
        make(data, tok, layout="paper")
    with pytest.raises(ValueError, match="no direct-mode RL prompt"):
        make(data, tok, layout="official", stage="rl", mode="direct", with_answers=False)
