import json
import os
import subprocess
import sys

import pytest

from data_pipeline.tokenizer import SPECIAL_TOKENS, TINY_PATH, build_tiny_tokenizer_json, load_tokenizer

TEXTS = [
    "Task goal: put the red cup on the plate\n\nStep 1: reach (33%)\n",
    "<ref_think>The gripper holds it.</ref_think><ref>3</ref><score_think>x</score_think><score>41.5%</score>",
    "n/a  N/A\t na\r\n\n\n   trailing spaces   ",
    "Ünïcödé ß 日本語のテキスト 🤖 emoji, 'quotes' \"double\" it's we'll",
    "[left] grasp the handle; [right] hold the lid. 0% 100% 1.41% -11%",
    "",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(None)


def test_specials_and_vocab(tok):
    assert tok.vocab_size == 2048
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.encode(special) == [i]
    assert (tok.pad_id, tok.eos_id, tok.im_start_id) == (0, 2, 1)
    assert (tok.vision_start_id, tok.vision_end_id, tok.image_pad_id) == (3, 4, 6)
    ids = tok.encode("a<|vision_start|><|image_pad|><|image_pad|><|vision_end|>b<|im_end|>")
    assert ids[1:5] == [3, 6, 6, 4] and ids[-1] == 2 and max(ids) < 2048
    # every other token in the vocabulary is ordinary text
    vocab = json.load(open(TINY_PATH))["model"]["vocab"]
    assert len(vocab) == 2048 and sorted(vocab.values()) == list(range(2048))


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert all(i >= len(SPECIAL_TOKENS) for i in ids)


def test_decode_skips_specials(tok):
    ids = tok.encode("<|im_start|>assistant\n40%<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n40%"
    assert tok.decode(ids) == "<|im_start|>assistant\n40%<|im_end|>"


def test_rebuild_is_deterministic():
    # Not compared with the shipped asset: the corpus includes the sim's texts, and a change there
    # leaves the shipped tokenizer valid (byte-level BPE encodes any text), only slightly less compact.
    fresh = build_tiny_tokenizer_json()
    assert fresh == build_tiny_tokenizer_json()
    assert json.loads(fresh)["model"]["vocab"]["<|image_pad|>"] == 6
    # a second process (different hash seeds) builds the same file
    env = dict(os.environ, PYTHONHASHSEED="12345")
    code = "import sys; from data_pipeline.tokenizer import build_tiny_tokenizer_json as b; sys.stdout.write(b())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out == fresh


def test_transformers_directory(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as RawTokenizer

    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=RawTokenizer.from_file(TINY_PATH), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.is_hf and loaded.vocab_size == 2048
    assert (loaded.pad_id, loaded.eos_id, loaded.image_pad_id, loaded.vision_start_id, loaded.vision_end_id) == (
        0, 2, 6, 3, 4)
    for text in TEXTS + ["<|im_start|>user\nhi<|vision_start|><|image_pad|><|vision_end|><|im_end|>"]:
        assert loaded.encode(text) == tok.encode(text)
        assert loaded.decode(loaded.encode(text)) == text


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        load_tokenizer("no/such/dir")
