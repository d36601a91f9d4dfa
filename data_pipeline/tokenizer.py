"""Tokenizer wrapper: the built-in tiny byte-level BPE (vocab 2048) or a checkpoint's tokenizer.

The tiny tokenizer (data_pipeline/assets/tiny_tokenizer.json) is retrained by
`python -m data_construction.tiny_tokenizer`.
"""
from __future__ import annotations

import os

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
TINY_PATH = os.path.join(os.path.dirname(__file__), "assets", "tiny_tokenizer.json")


class Tokenizer:
    """encode/decode with the special tokens recognised in text, plus the ids the pipeline needs.

    The backend is a `tokenizers.Tokenizer` (a core dependency) for the tiny tokenizer and for
    checkpoints alike, so a real checkpoint needs no transformers install."""

    def __init__(self, backend, path: str, pad_token: str | None = None):
        self.backend, self.path = backend, path
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        ids = {}
        for name, token in (("pad_id", pad_token or "<|endoftext|>"), ("eos_id", "<|im_end|>"),
                            ("im_start_id", "<|im_start|>"), ("image_pad_id", "<|image_pad|>"),
                            ("vision_start_id", "<|vision_start|>"), ("vision_end_id", "<|vision_end|>")):
            ids[name] = backend.token_to_id(token)
            if ids[name] is None:
                raise ValueError(f"tokenizer at {path} has no {token} token")
        self.pad_id, self.eos_id, self.im_start_id = ids["pad_id"], ids["eos_id"], ids["im_start_id"]
        self.image_pad_id, self.vision_start_id, self.vision_end_id = (
            ids["image_pad_id"], ids["vision_start_id"], ids["vision_end_id"])

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)


def _token_text(value) -> str | None:
    """tokenizer_config.json writes a token as a string or as {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def load_tokenizer(path: str | None = None) -> Tokenizer:
    """None -> the built-in tiny tokenizer; a checkpoint directory -> its tokenizer.json (Hub layout).

    tokenizer_config.json, when present, gives the pad token and any added tokens missing from
    tokenizer.json (transformers' fast tokenizers read the same two files)."""
    import json

    from tokenizers import AddedToken
    from tokenizers import Tokenizer as RawTokenizer

    if path is None:
        return Tokenizer(RawTokenizer.from_file(TINY_PATH), path=TINY_PATH)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        raise FileNotFoundError(f"{path} has no tokenizer.json (the fast-tokenizer file of a Hub checkpoint); "
                                "save one with transformers' tokenizer.save_pretrained")
    backend = RawTokenizer.from_file(file)
    config_file = os.path.join(path, "tokenizer_config.json")
    config = {}
    if os.path.isfile(config_file):
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    decoder = config.get("added_tokens_decoder") or {}
    for _, entry in sorted(decoder.items(), key=lambda kv: int(kv[0])):
        if backend.token_to_id(entry["content"]) is None:
            token = AddedToken(entry["content"], single_word=entry.get("single_word", False),
                               lstrip=entry.get("lstrip", False), rstrip=entry.get("rstrip", False),
                               normalized=entry.get("normalized", False), special=entry.get("special", False))
            (backend.add_special_tokens if entry.get("special") else backend.add_tokens)([token])
    return Tokenizer(backend, path=path, pad_token=_token_text(config.get("pad_token")))
