"""ProgressBench-Sim: procedural robot-manipulation episodes rendered with NumPy/PIL, turned into Progress-Bench files.

Six task families (tasks.py): pick_place, stack (2 or 3 cubes), push (into a zone), drawer (open it, put an
object inside), lid (cover a pot or take its lid off), sort (two arms, `[left]`/`[right]` step markers; the
other families use two arms in some episodes too). The scene is 3-D (scene.py: a table, boxes and cylinders,
arms with an elbow solved in closed form and a parallel gripper) and is rendered by a pinhole camera with
painter's-algorithm polygons, Lambert shading and vertical drop shadows (render.py) from three viewpoints:
camera_front, camera_top and camera_left. "[left]" is the arm at negative x (the left of the front view).

Episodes (episode.py) interpolate the state linearly between scripted waypoints (10-18 frames per action);
key frames end the key steps. data_construction.construct samples observations and writes the official records;
visual-unanswerable observations re-render the state with the manipulated object recolored, swapped for
another shape or removed, or cover it with a gray patch. Training samples get a rule-based four-block answer
(reasoning.py) written from the scene state.

Output of `generate(out_dir, size="small"|"full", seed=0, image_size=224)` (also
`python -m data_construction.sim --out DIR --size small --seed 0 [--image-size N]`):
    OUT/bench/{visual_same_view, visual_cross_view, text-normal, text-unanswerable, visual-unanswerable}.jsonl
    OUT/bench/images/{id}/{camera}_{frame:04d}[_edit].jpg
    OUT/train/{sft.jsonl (with a "response" field), rl.jsonl}, OUT/train/images/{id}/...
small: 40 / 16 / 20 / 20 / 16 benchmark samples, 300 SFT + 150 RL; full: 1400 / 546 / 503 / 503 / 360, 6000 + 3000.
Train and test are disjoint: separate seed streams per split (ids "sim_bench_*" vs "sim_train_*") and no
training episode has the goal text (objects, colors and target) of any benchmark episode.
A marker file written last makes a repeated call with the same parameters a no-op; a directory holding
another size, seed, image size or reasoning is refused (OtherSimHere) unless forced.
"""
__all__ = ["OtherSimHere", "generate"]


def __getattr__(name):  # the renderer (numpy, PIL) loads when used, not with the styles' names
    if name in __all__:
        from data_construction.sim import build
        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
