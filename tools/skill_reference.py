"""Train transformers' Qwen2 language model at a preset's size on a text-only skill file: the
independent reference for a skill the project's model does not learn (docs/learning.md).

python tools/skill_reference.py --file skills/match_words.jsonl [--steps 1500] [--heads 8 --kv-heads 8]
                                [--width 256] [--layers 8]

The rows are tokenized by the project's chat template (data_pipeline.prompts.tokenize_chat), so the
ids and the loss mask (the answer and its <|im_end|>) are those an SFT run trains on. The model
(transformers' Qwen2ForCausalLM: on text, Qwen2.5-VL's decoder with M-RoPE reduced to RoPE), its
initialisation (Linear kernels from N(0, 1/fan_in) as the tiny preset's, embeddings N(0, 0.02^2)
tied to the output) and the optimizer (torch AdamW, no weight decay, gradients clipped at 1.0, the
learning rate warmed up over 2% of the steps and then constant, as configs/sft.py:nano) are
independent of the project. Rows are taken in file order, batch after batch; prints the mean answer
loss of every --log-every steps. If this model learns a skill where an SFT run of the same size and
rows does not, the project has a bug; if neither learns, the model or the recipe is at fault.
"""
from __future__ import annotations

import argparse
import math
import time


def load_rows(path: str, tokenizer):
    """(ids, loss mask) of every row; a row with images is refused (this reference has no vision tower)."""
    from data_pipeline.prompts import tokenize_chat
    from data_pipeline.records import load_chat_records

    rows = []
    for chat in load_chat_records(path, strict=True):
        if chat.images:
            raise ValueError(f"{path}:{chat.line}: has images; the reference trains text-only skill files")
        t = tokenize_chat(tokenizer, chat, image_grid_thw=[])
        rows.append((t.input_ids.tolist(), t.loss_mask.tolist()))
    return rows


def build_model(preset: str, heads: int, kv_heads: int, seed: int, width: int = 0, layers: int = 0):
    """heads, kv_heads, width (hidden size; the MLP keeps the preset's ratio to it), layers: 0 keeps
    the preset's."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from progress_jax.models import families

    text = families.for_preset(preset).architecture("", preset).text
    torch.manual_seed(seed)
    hidden = width or text.hidden_size
    config = Qwen2Config(vocab_size=text.vocab_size, hidden_size=hidden,
                         intermediate_size=text.intermediate_size * hidden // text.hidden_size,
                         num_hidden_layers=layers or text.num_hidden_layers,
                         num_attention_heads=heads or text.num_attention_heads,
                         num_key_value_heads=kv_heads or text.num_key_value_heads, rope_theta=text.rope_theta,
                         rms_norm_eps=text.rms_norm_eps, tie_word_embeddings=True, initializer_range=0.02,
                         max_position_embeddings=text.max_position_embeddings)
    model = Qwen2ForCausalLM(config)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module is not model.lm_head:
            torch.nn.init.normal_(module.weight, std=1 / math.sqrt(module.in_features))
    return model


def train(model, rows, steps: int, batch: int, lr: float, log_every: int, echo=print) -> list[float]:
    """The mean answer loss of each logged window of steps."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = max(1, round(0.02 * steps))
    width = max(len(ids) for ids, _ in rows)
    curve, window, start = [], [], time.time()
    for step in range(1, steps + 1):
        chunk = [rows[((step - 1) * batch + i) % len(rows)] for i in range(batch)]
        ids = torch.zeros(batch, width, dtype=torch.long)
        mask = torch.zeros(batch, width)
        keep = torch.zeros(batch, width, dtype=torch.long)
        for i, (x, m) in enumerate(chunk):
            ids[i, :len(x)], mask[i, :len(m)], keep[i, :len(x)] = torch.tensor(x), torch.tensor(m, dtype=torch.float), 1
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, step / warmup)
        logits = model(input_ids=ids, attention_mask=keep).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        loss = (nll * mask[:, 1:]).sum() / mask[:, 1:].sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        window.append(loss.item())
        if step % log_every == 0 or step == steps:
            curve.append(sum(window) / len(window))
            echo(f"step {step}  answer loss {curve[-1]:.4f}  ({time.time() - start:.0f} s)")
            window = []
    return curve


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--file", required=True, help="a text-only SFT chat file (tools/skill_data.py --task match_words)")
    ap.add_argument("--preset", default="tiny", help="the built-in model preset whose language-model sizes to use")
    ap.add_argument("--heads", type=int, default=0, help="attention heads (default: the preset's)")
    ap.add_argument("--kv-heads", type=int, default=0, help="key-value heads (default: the preset's)")
    ap.add_argument("--width", type=int, default=0, help="hidden size, the MLP scaled with it (default: the preset's)")
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (default: the preset's)")
    ap.add_argument("--steps", type=int, default=1500, help="optimizer steps (default 1500)")
    ap.add_argument("--batch", type=int, default=16, help="rows a step (default 16)")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    ap.add_argument("--seed", type=int, default=0, help="the initialisation's seed (default 0)")
    ap.add_argument("--log-every", type=int, default=100, help="steps a printed mean loss covers (default 100)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = ap.parse_args(argv)
    if min(args.heads, args.kv_heads, args.width, args.layers) < 0:
        ap.error("--heads, --kv-heads, --width and --layers are >= 0 (0: the preset's)")
    import torch

    from data_pipeline.tokenizer import load_tokenizer

    torch.set_num_threads(args.threads)
    rows = load_rows(args.file, load_tokenizer())
    model = build_model(args.preset, args.heads, args.kv_heads, args.seed, args.width, args.layers)
    train(model, rows, args.steps, args.batch, args.lr, args.log_every)


if __name__ == "__main__":
    main()
