"""Synthetic SFT files that each isolate one skill a ProgressLM answer needs, to time how fast a model learns it.

python tools/skill_data.py --out DIR --task TASK [--samples 4000] [--seed 0] [--image-size 112] [--slots 1]
python tools/skill_data.py --out DIR --task sim_match|sim_ref --records SIM/train/sft.jsonl [--frames 3]

Writes DIR/<task>.jsonl (SFT chat rows: an <image> (four for match, match_colors, match_fill, near and near_fill; none for match_words and near_words), a question, a one-word answer;
docs/formats.md)
and DIR/images/. Every image is a grey canvas with coloured squares of random size and place
(match_fill: one colour all over; near_fill: one shade of grey):

- color: one square; "What color is the block?" -> its colour (six colours). What the image shows,
  wherever it is.
- side: one square wholly in the left or the right half; "Is the block on the left or the right?".
  Where it is, with nothing else in the image to measure it against.
- relation: a red and a blue square apart horizontally; "Is the red block left or right of the blue
  block?". Where one thing is against another, which is how progress shows in ProgressBench-Sim
  (the gripper over the table, the block by the plate).
- match: three frames of one scene (a red square on its way to a blue one, each frame followed by
  "Frame k."), then an observation that repeats one of them; "Which frame does the last image
  show?" -> its number. Finding the demonstration frame that matches the observation, the `<ref>` of
  a ProgressLM answer, in its simplest form: four images a row.
- match_colors: as match, but each frame one square of its own colour and place on the grey
  canvas.
- match_fill: as match_colors with each frame filled with its colour, so that every image token
  carries it: the first step of a curriculum to match (docs/learning.md).
- match_words: as match_colors with the frames' colour names written instead of images, each
  followed by its number as a frame by its label ("orange 1. red 2. yellow 3. Last: yellow."): no
  images at all.
- near_words: the comparison of sim_ref in words, no images. Values are letters in alphabetical
  order (LETTERS); three frames' values, increasing as a demo's frames move on, each followed by its
  number, then a value that none equals ("c 1. h 2. r 3. Last: k."); "Which frame is closest to
  the last?" -> the number of the one nearest it (never a tie). With --slots K each frame is K
  letters: one slot (the same in every frame of a row) holds the value and the others a background
  the frames share, as most of an image's tokens are the same in every frame of a scene.
- near_fill: near_words in images, as match_fill is match_words: each frame filled with a shade of
  grey (darker to lighter as the frames move on; LEVELS shades), then an image of a shade none
  equals; "Which frame is closest to the last image?" -> the number of the nearest shade. Every
  image token carries the value: the first rung from an exact match to the nearest frame.
- near: match's scene, the red square at three of LEVELS evenly spaced points of its way (in
  order) and then at a point none of them is at; "Which frame is closest to the last image?" ->
  the frame whose square is nearest, never a tie: the nearest frame with a few tokens that differ.
- sim_match: match on ProgressBench-Sim's own frames (--records, a sim SFT or benchmark file, or the
  same-view records `python -m data_construction.sim --extra N` writes): a
  record's demo frames (--frames of them, in order; 0: all), then one of them again. No images are
  written: the rows name the records' images, read under the records' image root
  (`--config.data.image_root=SIM/train/images`).
- sim_ref: a record's demo frames, then its observation; "Which frame is closest to the last
  image?" -> its closest_idx: the `<ref>` of the record's answer (answerable records only; the others
  are counted and skipped). With --frames N: N of the frames, in order, the closest one among them,
  and the answer is its place among the N.

The answer is decided by the images alone (match_words: by the text), so a model that reads the skill
reaches a loss near 0 and a blind one stays at ln(choices) / answer tokens. docs/learning.md gives
the SFT command and the steps each skill took the tiny model.
"""
from __future__ import annotations

import argparse
import json
import os
import random

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40),
          "pink": (240, 120, 200), "orange": (240, 140, 30)}
GREY = (128, 128, 128)
QUESTIONS = {"color": "What color is the block?", "side": "Is the block on the left or the right?",
             "relation": "Is the red block left or right of the blue block?",
             "match": "Which frame does the last image show?"}
QUESTIONS["match_colors"] = QUESTIONS["match_fill"] = QUESTIONS["match_words"] = QUESTIONS["match"]
QUESTIONS["sim_match"] = QUESTIONS["match"]
QUESTIONS["sim_ref"] = "Which frame is closest to the last image?"
QUESTIONS["near_words"] = "Which frame is closest to the last?"
QUESTIONS["near_fill"] = QUESTIONS["near"] = QUESTIONS["sim_ref"]
SIM_TASKS = ("sim_match", "sim_ref")
FRAMES = 3  # the match task's frames
LETTERS = "abcdefghjklmnoprstuwy"  # near_words' values: each one token of the built-in tokenizer after a space
LEVELS = len(LETTERS)  # the near tasks' values: near_words' letters, near_fill's shades of grey


def shade(value: int) -> tuple[int, int, int]:
    """near_fill's grey for a value, dark to light."""
    level = 20 + 200 * value // (LEVELS - 1)
    return (level, level, level)


def draw(task: str, rng: random.Random, size: int):
    """One image and its answer: (list of (x, y, side, colour) squares, answer)."""
    side = rng.randint(size // 6, size // 3)
    if task == "color":
        name = rng.choice(sorted(COLORS))
        return [(rng.randint(0, size - side), rng.randint(0, size - side), side, name)], name
    if task == "side":
        answer = rng.choice(["left", "right"])
        x = rng.randint(0, size // 2 - side) if answer == "left" else rng.randint(size // 2, size - side)
        return [(x, rng.randint(0, size - side), side, rng.choice(sorted(COLORS)))], answer
    side = rng.randint(size // 7, size // 4)
    while True:  # apart by more than a square's width, so neither overlaps the other
        x_red, x_blue = rng.randint(0, size - side), rng.randint(0, size - side)
        if abs(x_red - x_blue) > side + size // 28:
            break
    squares = [(x_red, rng.randint(0, size - side), side, "red"), (x_blue, rng.randint(0, size - side), side, "blue")]
    return squares, "left" if x_red < x_blue else "right"


def draw_path(rng: random.Random, size: int):
    """A scene of match and near: (scene at t), where a blue square stays and a red one is at the point
    t (0 to 1) of its way from a random start towards it (1: beside the blue square)."""
    side = rng.randint(size // 8, size // 6)
    while True:  # a start far enough from the blue square that frames lie a square's width apart or more
        x_blue, y_blue, x0, y0 = (rng.randint(0, size - side) for _ in range(4))
        if max(abs(x0 - x_blue), abs(y0 - y_blue)) > 3 * side:
            break
    # The red square ends one square's width short of the blue one, on the line from its start.
    d = max(abs(x0 - x_blue), abs(y0 - y_blue))
    x1, y1 = x_blue + (x0 - x_blue) * side / d, y_blue + (y0 - y_blue) * side / d
    return lambda t: [(round(x0 + (x1 - x0) * t), round(y0 + (y1 - y0) * t), side, "red"), (x_blue, y_blue, side, "blue")]


def draw_match(rng: random.Random, size: int):
    """Frames of one scene and the observation's frame number: the red square at evenly spaced
    points of its way (the first frame at the start, the last one beside the blue square)."""
    scene = draw_path(rng, size)
    return [scene(k / (FRAMES - 1)) for k in range(FRAMES)], rng.randrange(FRAMES) + 1


def draw_values(rng: random.Random) -> tuple[list[int], int, int]:
    """The near tasks' values (FRAMES increasing places in the LEVELS scale), the last one (none of
    them equals it and one is nearest) and the nearest one's frame number."""
    while True:
        values, last = sorted(rng.sample(range(LEVELS), FRAMES)), rng.randrange(LEVELS)
        gaps = [abs(v - last) for v in values]
        if 0 < min(gaps) and gaps.count(min(gaps)) == 1:
            return values, last, gaps.index(min(gaps)) + 1


def draw_near_words(rng: random.Random, slots: int) -> tuple[list[str], str, int]:
    """near_words' frames and last item as words of `slots` letters that differ in one slot only,
    and the answer."""
    values, last, answer = draw_values(rng)
    background, slot = [rng.choice(LETTERS) for _ in range(slots)], rng.randrange(slots)

    def word(value):
        return " ".join(LETTERS[value] if k == slot else c for k, c in enumerate(background))
    return [word(v) for v in values], word(last), answer


def draw_frames(task: str, rng: random.Random, size: int):
    """The frames of a match, match_colors or match_fill row (lists of squares) and the repeated
    frame's number."""
    if task == "match":
        return draw_match(rng, size)
    frames = []
    for name in rng.sample(sorted(COLORS), FRAMES):  # one colour a frame
        if task == "match_fill":
            frames.append([(0, 0, size, name)])
        else:
            side = rng.randint(size // 6, size // 3)
            frames.append([(rng.randint(0, size - side), rng.randint(0, size - side), side, name)])
    return frames, rng.randrange(FRAMES) + 1


def render(squares, size: int):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), GREY)
    pen = ImageDraw.Draw(image)
    for x, y, side, name in squares:
        pen.rectangle([x, y, x + side - 1, y + side - 1], fill=COLORS.get(name, name))  # a name or RGB
    return image


def frames_prompt(count: int, task: str) -> str:
    """count labelled frames, the image to match, then the task's question."""
    return "".join(f"<image>Frame {k + 1}. " for k in range(count)) + "<image>" + QUESTIONS[task]


def words_prompt(items: list[str], last: str, task: str) -> str:
    """The word tasks' prompt: each item followed by its number, then the last one and the question."""
    return "".join(f"{w} {k + 1}. " for k, w in enumerate(items)) + f"Last: {last}. " + QUESTIONS[task]


def chat_row(prompt: str, answer: str, images: list[str]) -> str:
    return json.dumps({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                       "images": images}) + "\n"


def write(out: str, task: str, samples: int, seed: int, size: int, slots: int = 1) -> str:
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rng = random.Random(f"{task}/{seed}")
    path = os.path.join(out, f"{task}.jsonl")
    with open(path, "w") as f:
        for i in range(samples):
            if task == "match_words":
                colors = rng.sample(sorted(COLORS), FRAMES)
                answer = rng.randrange(FRAMES) + 1
                scenes, prompt = [], words_prompt(colors, colors[answer - 1], task)
            elif task == "near_words":
                frames, last, answer = draw_near_words(rng, slots)
                scenes, prompt = [], words_prompt(frames, last, task)
            elif task in ("match", "match_colors", "match_fill"):
                frames, answer = draw_frames(task, rng, size)
                scenes = [*frames, frames[answer - 1]]
                prompt = frames_prompt(FRAMES, task)
            elif task in ("near", "near_fill"):
                values, last, answer = draw_values(rng)
                if task == "near":
                    scene = draw_path(rng, size)
                    scenes = [scene(v / (LEVELS - 1)) for v in [*values, last]]
                else:
                    scenes = [[(0, 0, size, shade(v))] for v in [*values, last]]
                prompt = frames_prompt(FRAMES, task)
            else:
                squares, answer = draw(task, rng, size)
                scenes, prompt = [squares], "<image>" + QUESTIONS[task]
            names = []
            for j, squares in enumerate(scenes):
                names.append(f"images/{task}_{seed}_{i:05d}" + (f"_{j}" if len(scenes) > 1 else "") + ".png")
                render(squares, size).save(os.path.join(out, names[-1]))
            f.write(chat_row(prompt, str(answer), names))
    return path


def write_sim(out: str, task: str, records: str, samples: int, seed: int, frames: int) -> str:
    """sim_match or sim_ref rows from the visual-demo records of `records` (every record in turn, in a
    shuffled order). sim_match: `frames` of its demo frames in their order (0 or more than it has:
    all), then one of them again; sim_ref: as many, the closest to the observation among them, then
    the observation."""
    from data_pipeline.records import load_records, record_image_path

    demos = [r for r in load_records(records) if r.kind == "visual"]
    if task == "sim_ref":
        unanswerable = sum(r.closest_idx is None for r in demos)
        if unanswerable:
            print(f"warning: {records}: skipped {unanswerable} unanswerable records (no closest_idx)")
        demos = [r for r in demos if r.closest_idx is not None]
    if not demos:
        raise SystemExit(f"{records}: no {'answerable ' if task == 'sim_ref' else ''}record with a visual_demo")
    rng = random.Random(f"{task}/{seed}")
    rng.shuffle(demos)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{task}.jsonl")
    with open(path, "w") as f:
        for i in range(samples):
            record = demos[i % len(demos)]
            n = len(record.visual_demo) if frames <= 0 else min(frames, len(record.visual_demo))
            if task == "sim_ref":  # the closest frame and n - 1 others, in the demo's order
                closest = record.closest_idx - 1
                others = rng.sample([k for k in range(len(record.visual_demo)) if k != closest], n - 1)
                picked = sorted([closest, *others])
                answer = picked.index(closest) + 1
            else:
                picked = sorted(rng.sample(range(len(record.visual_demo)), n))
                answer = rng.randrange(n) + 1
            shown = [record_image_path("", record, record.visual_demo[k]) for k in picked]
            last = record_image_path("", record, record.observation) if task == "sim_ref" else shown[answer - 1]
            f.write(chat_row(frames_prompt(len(shown), task), str(answer), [*shown, last]))
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory (<task>.jsonl and images/)")
    ap.add_argument("--task", required=True, choices=sorted(QUESTIONS), help="the skill the answers need")
    ap.add_argument("--samples", type=int, default=4000, help="rows to write (default 4000)")
    ap.add_argument("--seed", type=int, default=0, help="the random seed of the rows (default 0)")
    ap.add_argument("--image-size", type=int, default=112, help="square images of this many pixels a side (not sim_match, sim_ref: their images are the sim's)")
    ap.add_argument("--slots", type=int, default=1, help="near_words: letters a frame (default 1; the others a background the frames share)")
    ap.add_argument("--records", default="", help="sim_match, sim_ref: the sim records (SFT or benchmark JSONL) whose frames to use")
    ap.add_argument("--frames", type=int, default=0, help="sim_match, sim_ref: demo frames a row (default 0: all of the record's; sim_ref keeps the closest among them)")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.image_size < 28:
        ap.error("--samples must be >= 1 and --image-size >= 28")
    if (args.task in SIM_TASKS) != bool(args.records):
        ap.error("--records goes with --task sim_match or sim_ref, and only with them")
    if args.slots < 1 or (args.slots != 1 and args.task != "near_words"):
        ap.error("--slots goes with --task near_words only, and is >= 1")
    if args.frames and args.task not in SIM_TASKS:
        ap.error("--frames goes with --task sim_match or sim_ref only")
    if args.task in SIM_TASKS:
        print(write_sim(args.out, args.task, args.records, args.samples, args.seed, args.frames))
    else:
        print(write(args.out, args.task, args.samples, args.seed, args.image_size, args.slots))


if __name__ == "__main__":
    main()
