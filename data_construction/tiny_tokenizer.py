"""Retrains the built-in tiny tokenizer (byte-level BPE, vocab 2048) deterministically on the
project's own prompt text and the sim's training samples:
`python -m data_construction.tiny_tokenizer [--out PATH]` writes data_pipeline/assets/tiny_tokenizer.json
(data_pipeline.tokenizer loads it)."""
from __future__ import annotations

import argparse
import random

import numpy as np
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as RawTokenizer

from data_construction.construct import SUBSETS, plan_samples, to_record
from data_construction.sim.build import make_episode
from data_construction.sim.reasoning import response
from data_pipeline.jsonl import write_text
from data_pipeline.prompts import build_messages, format_percent, render_text
from data_pipeline.records import Record, parse_record
from data_pipeline.tokenizer import SPECIAL_TOKENS, TINY_PATH

TINY_VOCAB_SIZE = 2048
# Qwen2's pre-tokenizer split: digits one by one, letters with one leading non-letter, newline runs.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# ---- training corpus -------------------------------------------------------------------------

_COLORS = ["red", "blue", "green", "yellow", "orange", "purple", "white", "black", "pink", "brown", "grey", "cyan",
           "magenta", "golden", "silver", "beige", "teal", "navy", "maroon", "olive", "violet", "turquoise"]
_THINGS = ["cup", "block", "bowl", "ball", "cube", "cylinder", "mug", "bottle", "plate", "box", "sponge", "spoon",
           "marker", "tray", "towel", "can", "lid", "drawer", "door", "cabinet", "basket", "bin", "jar", "kettle",
           "pot", "pan", "knife", "fork", "banana", "apple", "carrot", "lemon", "eggplant", "toy", "cloth", "brush",
           "book", "pen", "pencil", "scissors", "tape", "battery", "screwdriver", "hammer", "wrench", "bolt", "nut",
           "switch", "button", "handle", "knob", "faucet", "microwave", "oven", "fridge", "shelf", "rack", "peg",
           "ring", "star", "triangle", "sphere", "pyramid", "puck", "tile", "card", "coin", "strawberry", "teapot"]
_OBJECTS = [f"{c} {t}" for c in _COLORS[:8] for t in _THINGS[:18]] + _THINGS
_PLACES = ["the plate", "the tray", "the left bin", "the right bin", "the shelf", "the table", "the box",
           "the blue block", "the target zone", "the top of the stack", "the sink", "the counter", "the stove",
           "the cutting board", "the corner", "the middle of the table", "the front edge", "the back wall",
           "the drawer", "the basket", "the open cabinet", "the lower shelf", "the upper rack", "the green mat"]
_VERBS = ["pick up", "place", "push", "stack", "open", "close", "sort", "move", "lift", "slide", "rotate", "grasp",
          "put", "insert", "pour", "wipe", "fold", "unfold", "hang", "press", "turn", "pull", "drop", "flip",
          "arrange", "align", "transfer", "cover", "uncover", "empty", "fill", "hand over", "sweep", "twist"]
# General words for free-form reasoning text, so that BPE has enough distinct pieces to fill the vocabulary.
_WORDS = """
about above across after again against almost along already also although always among amount angle another
answer anything appear approach area around arrive aside attach available away back backward balance base
because become before begin behind being below beneath beside between beyond both bottom bring brief bright
broken build but careful carry case center certain change check clear clearly closer closest collect
compare complete completed completely condition confirm consider contact contain continue control correct
could count current currently decide degree demonstration describe description detail determine difference
different direction distance does doing done down during each early easily edge either else empty end enough
entire estimate even event every evidence exactly example expected explain extend fact fail far fast few final
finally find finger finish first fit fixed following force forward found frame free from front full fully
further gap general gently get give given goal going good grip gripper ground half happen hard has have held
help here high hold holding however idea image important include indicate initial inside instead into item
its itself just keep key kind know large last later left length less level light like likely line little
long look looking lower made main make many match matches matching may maybe measure might missing model
more most motion mounted move moved movement moving much must near nearly need never new next none normal
not note now number object observation observed obvious occluded off often once one only onto open other
our out outside over overall own part partially particular past path perhaps phase picture piece point
pose position possible previous probably process progress proper quite rather reach reached ready real
reason reasoning recent reference region relative remain remaining right robot roughly same scene second
see seem seems seen separate sequence set several shape short should show shown side similar simple since
single size slightly small some something soon space stage start started state still stop straight
success suggest support sure surface take target task than that the their them then there these they
thing third this those though three through time together too toward towards track two under until upon
upper used using usually very view viewpoint visible wait want was way well were what when where whether
which while whole why will with within without work would yet zone arm arms camera wrist joint elbow
shoulder base link pixel pixels shadow light dark bright lighting background foreground distractor
distractors clutter scene robotic manipulation gripper fingers jaw jaws parallel vacuum suction pick
picking placed placing pushed pushing stacked stacking opened opening closed closing sorted sorting lifted
lifting grasped grasping released releasing reached reaching rotated rotating moved slid sliding lowered
lowering raised raising inserted inserting poured pouring wiped wiping folded folding pressed pressing
turned turning pulled pulling dropped dropping flipped flipping aligned aligning transferred covering
""".split()
_STEP_TEMPLATES = [
    "{arm}reach towards the {obj}", "{arm}grasp the {obj}", "{arm}lift the {obj}",
    "{arm}move the {obj} above {place}", "{arm}lower the {obj} onto {place}", "{arm}release the {obj}",
    "{arm}retract the gripper", "{arm}push the {obj} to {place}", "{arm}open the {obj}", "{arm}close the {obj}",
    "{arm}rotate the {obj}", "{arm}slide the {obj} towards {place}",
]
_ARMS = ["", "", "[left] ", "[right] ", "[towards] "]
_REASONS = [
    "The observation shows the gripper holding the {obj} just above {place}, which matches step {n}.",
    "The {obj} has been lifted but not yet moved, so step {n} is the closest key frame.",
    "Compared with step {n}, the {obj} is slightly further along, about halfway to the next step.",
    "The scene does not contain the {obj}; it does not fit the demonstrated task.",
    "The arm is still reaching for the {obj}, a little before step {n}.",
    "Both arms are visible; the left gripper has closed around the {obj} while the right one waits, like step {n}.",
    "Seen from another camera, the {obj} is partly occluded, but its position relative to {place} matches step {n}.",
    "The {obj} has a different color from the one in the demonstration, so the observation is unanswerable.",
    "The {obj} was replaced by another object; no demonstration step matches.",
    "Progress lies between step {n} and the following step, closer to step {n}.",
    "Since the drawer is already half open and the handle is still grasped, the task is past step {n}.",
    "The robot has already completed most of the motion: the {obj} is nearly at {place}.",
    "Nothing has moved yet; the initial configuration is unchanged, matching step {n}.",
    "The {obj} sits on {place} and the gripper is open, as in step {n}.",
]


def _sim_texts(episodes: int = 60) -> list[str]:
    """ProgressBench-Sim training samples (goals, steps, rule-based reasoning) as rendered prompts + answers."""
    texts = []
    for index in range(episodes):
        episode = make_episode("train_sft", index, seed=0, image_size=224)
        subset = SUBSETS[index % len(SUBSETS)]
        for sample in plan_samples(episode, subset, 3, np.random.default_rng([0, index])):
            record = parse_record(to_record(sample), subset, "sim", index + 1)
            messages = build_messages(record, "think") + [{"role": "assistant", "content": response(sample)}]
            texts.append(render_text(messages))
    return texts


def _corpus(seed: int = 0, samples: int = 600) -> list[str]:
    """Prompt text in both modes and both demo kinds, answers in the four-block format, all percentages,
    and the sim's texts."""
    rng = random.Random(seed)
    texts = [f"{p}%" for p in range(101)] + [f"{p / 100:g}%" for p in range(0, 10001, 37)] + ["n/a", "N/A", "na"]
    for _ in range(samples):
        sentence = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 16)))
        texts.append(sentence[0].upper() + sentence[1:] + rng.choice([".", ",", ";", ":", "?", "!"]))
    for i in range(samples):
        obj, place = rng.choice(_OBJECTS), rng.choice(_PLACES)
        total = rng.randint(2, 9)
        steps = tuple(rng.choice(_STEP_TEMPLATES).format(arm=rng.choice(_ARMS), obj=rng.choice(_OBJECTS), place=place)
                      for _ in range(total))
        visual = i % 2 == 0
        closest = rng.randint(1, total + 1 if visual else total)
        progress = None if i % 7 == 0 else rng.randint(0, 100) / 100
        record = Record(
            source="corpus", line=i + 1, id=f"traj_{i}", task_goal=f"{rng.choice(_VERBS)} the {obj} to {place}",
            visual_demo=tuple(f"camera_front_{k:04d}.jpg" for k in range(total + 1)) if visual else None,
            text_demo=None if visual else steps, total_steps=total, observation=f"camera_top_{i:04d}.jpg",
            closest_idx=None if progress is None else closest, progress=progress)
        mode = "think" if i % 3 else "direct"
        ref_reason, score_reason = (rng.choice(_REASONS).format(obj=obj, place=place, n=closest) for _ in range(2))
        ref = "n/a" if progress is None else str(closest)
        answer = format_percent(progress)
        if mode == "think":
            answer = (f"<ref_think>{ref_reason}</ref_think><ref>{ref}</ref>"
                      f"<score_think>{score_reason}</score_think><score>{answer}</score>")
        messages = build_messages(record, mode) + [{"role": "assistant", "content": answer}]
        texts.append(render_text(messages))
    return texts + _sim_texts()


def train_tiny_tokenizer(texts: list[str]):
    """Byte-level BPE with the Qwen special tokens at ids 0..7 and exactly TINY_VOCAB_SIZE entries."""
    tok = RawTokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size != TINY_VOCAB_SIZE:
        raise RuntimeError(f"trained vocab has {size} entries, expected {TINY_VOCAB_SIZE}; the corpus is too small")
    return tok


def build_tiny_tokenizer_json() -> str:
    return train_tiny_tokenizer(_corpus()).to_str(pretty=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Retrain the built-in tiny tokenizer.")
    parser.add_argument("--out", default=TINY_PATH)
    args = parser.parse_args()
    write_text(args.out, build_tiny_tokenizer_json())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
