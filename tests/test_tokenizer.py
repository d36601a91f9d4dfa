import json
import os
import subprocess
import sys

import pytest

from data_construction.tiny_tokenizer import build_tiny_tokenizer_json
from data_pipeline.tokenizer import SPECIAL_TOKENS, TINY_PATH, load_tokenizer

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
    code = "import sys; from data_construction.tiny_tokenizer import build_tiny_tokenizer_json as b; sys.stdout.write(b())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out == fresh


def _hub_dir(tmp_path):
    """A checkpoint directory in the Hub layout, written by transformers: tokenizer.json, tokenizer_config.json
    (pad/eos tokens, added_tokens_decoder, the chat template), and a preprocessor_config.json beside them."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as RawTokenizer

    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=RawTokenizer.from_file(TINY_PATH), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    hf.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    hf.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"min_pixels": 3136, "max_pixels": 12845056}))
    return hf


def test_checkpoint_directory_matches_transformers(tok, tmp_path):
    hf = _hub_dir(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.vocab_size == len(hf) == 2048
    assert (loaded.pad_id, loaded.eos_id, loaded.image_pad_id, loaded.vision_start_id, loaded.vision_end_id) == (
        hf.pad_token_id, hf.convert_tokens_to_ids("<|im_end|>"), 6, 3, 4)
    for text in TEXTS + ["<|im_start|>user\nhi<|vision_start|><|image_pad|><|vision_end|><|im_end|>"]:
        ids = loaded.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert loaded.decode(ids) == hf.decode(ids) == text
        assert loaded.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_added_tokens_only_in_tokenizer_config(tmp_path):
    """Checkpoints saved by transformers 4 list added tokens in tokenizer_config.json's added_tokens_decoder;
    one listed only there is a token for transformers, and so for us."""
    transformers = pytest.importorskip("transformers")
    _hub_dir(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {"2048": {"content": "<|box_start|>", "special": True, "lstrip": False,
                                               "rstrip": False, "normalized": False, "single_word": False}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded, hf = load_tokenizer(str(tmp_path)), transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ids = loaded.encode("a<|box_start|>b")
    assert loaded.vocab_size == len(hf) == 2049 and ids == hf.encode("a<|box_start|>b", add_special_tokens=False)
    assert 2048 in ids
    assert loaded.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True) == "ab"


# Runs in a fresh interpreter in which transformers and torch cannot be imported: what the core
# install (`pip install -e .` without [test]) has. Prints the ids of a prompt in the official layout.
CORE_ONLY = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformers", "torch"):
            raise ImportError(f"{name} is not part of the core install")

sys.meta_path.insert(0, Block())
from data_pipeline.prompts import tokenize_record
from data_pipeline.records import parse_record
from data_pipeline.tokenizer import load_tokenizer

tok = load_tokenizer(sys.argv[1])
line = {"id": "t", "task_goal": "open the drawer", "text_demo": ["reach", "pull"], "total_steps": 2,
        "stage_to_estimate": "o.jpg", "closest_idx": 1, "progress_score": "50%"}
out = tokenize_record(tok, parse_record(line, "b", "b.jsonl", 1), [[1, 2, 2]], "think", layout="official")
try:
    import transformers  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
print(json.dumps({"ids": out.input_ids.tolist(), "blocked": blocked, "loaded": sorted(
    m for m in sys.modules if m.split(".")[0] in ("transformers", "torch"))}))
"""


def test_checkpoint_loads_without_transformers(tmp_path):
    """Subprocess with transformers/torch import-blocked (faster than a fresh venv, same guarantee for
    this code path): the checkpoint's tokenizer loads and tokenizes a prompt, ids equal the in-process ones."""
    _hub_dir(tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-c", CORE_ONLY, str(tmp_path)], capture_output=True, text=True,
                         env=env, cwd=root)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["blocked"] and result["loaded"] == []
    from data_pipeline.prompts import tokenize_record
    from data_pipeline.records import parse_record

    line = {"id": "t", "task_goal": "open the drawer", "text_demo": ["reach", "pull"], "total_steps": 2,
            "stage_to_estimate": "o.jpg", "closest_idx": 1, "progress_score": "50%"}
    want = tokenize_record(load_tokenizer(str(tmp_path)), parse_record(line, "b", "b.jsonl", 1), [[1, 2, 2]],
                           "think", layout="official")
    assert result["ids"] == want.input_ids.tolist()


def test_directory_without_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        load_tokenizer(str(tmp_path))


def test_missing_directory():
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        load_tokenizer("no/such/dir")
