"""Stage 2 of unanswerable image construction: apply an EditProposal to an observation image.

An editor is a callable `editor(record, image, proposal) -> PIL image` (same size as the input).
- DiffusersEditor: any diffusers image-editing pipeline (Qwen-Image-Edit by default), loaded by
  name or local path with DiffusionPipeline.from_pretrained; diffusers is imported lazily (extra
  `tools`). The result is resized back to the input size. As the official eval/img_edit/edit_batch.py
  does, every sample's generator is seeded with the same seed, 42 by default (a resumed run makes the
  same edit); per_sample_seed=True seeds sample `key` with seed + crc32(key) instead.
- SimEditor: ProgressBench-Sim observations are re-rendered with the edit applied to the scene:
  color_change recolors the manipulated object (to a color named in the instruction, else the
  first color no item of the scene has), object_replacement swaps a cylinder for a cube and any
  other shape for a cylinder, occlusion_removal removes the object when the instruction says
  remove/erase/delete/take away, else covers it with a gray patch. An edit that changes too few
  pixels in this view (object hidden) raises EditError instead of yielding an unchanged image.
"""
from __future__ import annotations

import inspect
import re
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from data_pipeline.records import Record

DTYPES = ("bfloat16", "float16", "float32")
DEFAULT_MODEL = "Qwen/Qwen-Image-Edit"
OFFICIAL_SEED = 42  # eval/img_edit/edit_batch.py: torch.Generator(device).manual_seed(42) for every image
_REMOVE_WORDS = re.compile(r"\b(remove|erase|delete|take away|get rid of)\b", re.IGNORECASE)
_SIM_ID = re.compile(r"^sim_(?P<stream>[a-z_]+)/(?P<family>[a-z_]+)/(?P<index>\d+)$")
_SIM_OBS = re.compile(r"^(?P<camera>.+)_(?P<frame>\d+)\.(?:jpg|png)$")
MAX_REPRODUCTION_ERROR = 12.0  # mean |difference| (0-255) between a re-render and the file on disk (JPEG noise)


@dataclass(frozen=True)
class EditProposal:
    """Stage 1's output (data_construction.unanswerable parses it from the model's answer)."""
    strategy: str  # one of unanswerable.STRATEGIES
    instruction: str


class EditError(ValueError):
    """An edit that cannot be applied to this sample; the message says why."""


def sample_seed(seed: int, key: str) -> int:
    return (seed + zlib.crc32(key.encode())) % (2 ** 32)


class DiffusersEditor:
    """Calls `pipe(image=..., prompt=instruction, negative_prompt=..., num_inference_steps=..., generator=...)`
    plus true_cfg_scale / guidance_scale / extra kwargs when set. A setting the pipeline does not accept is
    an error naming the pipeline class (never silently ignored); None leaves the pipeline's default."""

    def __init__(self, pipe, num_inference_steps: int = 50, true_cfg_scale: float | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | None = " ", seed: int = OFFICIAL_SEED,
                 device: str = "cpu", extra_kwargs: dict | None = None, per_sample_seed: bool = False):
        self.pipe, self.seed, self.device, self.per_sample_seed = pipe, seed, device, per_sample_seed
        settings = {"num_inference_steps": num_inference_steps, "true_cfg_scale": true_cfg_scale,
                    "guidance_scale": guidance_scale, "negative_prompt": negative_prompt, **(extra_kwargs or {})}
        self.settings = {k: v for k, v in settings.items() if v is not None}
        accepted = inspect.signature(type(pipe).__call__).parameters
        unknown = [k for k in [*self.settings, "image", "prompt", "generator"] if k not in accepted]
        if unknown:
            raise ValueError(f"{type(pipe).__name__} does not accept {unknown}; accepted: {sorted(accepted)}")

    @classmethod
    def load(cls, model: str = DEFAULT_MODEL, dtype: str = "bfloat16", device: str = "cuda", **settings):
        try:
            import torch
            from diffusers import DiffusionPipeline
        except ImportError as e:
            raise ImportError("the diffusers editor needs diffusers and torch: pip install -e .[tools]") from e
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        from diffusers.pipelines import pipeline_utils

        # diffusers >= 0.36 names the argument dtype (torch_dtype is deprecated there); older ones torch_dtype.
        name = "dtype" if hasattr(pipeline_utils, "_resolve_dtype") else "torch_dtype"
        pipe = DiffusionPipeline.from_pretrained(model, **{name: getattr(torch, dtype)})
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        return cls(pipe, device=device, **settings)

    def __call__(self, record: Record, image: Image.Image, proposal: EditProposal, key: str) -> Image.Image:
        import torch

        seed = sample_seed(self.seed, key) if self.per_sample_seed else self.seed
        generator = torch.Generator(device=self.device).manual_seed(seed)
        out = self.pipe(image=image.convert("RGB"), prompt=proposal.instruction, generator=generator,
                        **self.settings).images[0]
        if not isinstance(out, Image.Image):
            out = Image.fromarray(np.asarray(out))
        return out.convert("RGB").resize(image.size, Image.BICUBIC) if out.size != image.size else out.convert("RGB")


class SimEditor:
    """Procedural edits of ProgressBench-Sim observations by re-rendering (see the module docstring).
    Episodes are rebuilt from the record id with the sim's seed; a mismatch with the record's goal or
    with the image on disk is an error (wrong seed or image size)."""

    def __init__(self, seed: int = 0):
        self.seed = seed
        self._episodes = {}

    def episode(self, record: Record, image_size: int):
        from data_construction.sim.build import STREAMS, make_episode

        m = _SIM_ID.match(record.id)
        if m is None or m["stream"] not in STREAMS:
            raise EditError(f"id {record.id!r} is not a ProgressBench-Sim id (sim_STREAM/FAMILY/INDEX)")
        key = (record.id, image_size)
        if key not in self._episodes:
            ep = make_episode(m["stream"], int(m["index"]), self.seed, image_size)
            if ep.id != record.id or ep.goal != record.task_goal:
                raise EditError(f"id {record.id}: the sim with seed {self.seed} rebuilds goal {ep.goal!r}, the record "
                                f"has {record.task_goal!r}; pass the seed the sim was generated with")
            self._episodes[key] = ep
        return self._episodes[key]

    def steps(self, record: Record, image_size: int) -> list[str]:
        return list(self.episode(record, image_size).steps)

    def __call__(self, record: Record, image: Image.Image, proposal: EditProposal, key: str = "") -> Image.Image:
        from data_construction.sim.episode import MIN_CHANGED
        from data_construction.sim.render import render
        from data_construction.sim.scene import scene_solids

        if image.size[0] != image.size[1]:
            raise EditError(f"{record.observation}: sim images are square, got {image.size}")
        m = _SIM_OBS.match(record.observation)
        if m is None:
            raise EditError(f"{record.observation}: not a sim observation file (CAMERA_FRAME.jpg)")
        ep = self.episode(record, image.size[0])
        camera, t = m["camera"], int(m["frame"])
        original = np.asarray(ep.frame(camera, t), float)
        error = np.abs(original - np.asarray(image.convert("RGB"), float)).mean()
        if error > MAX_REPRODUCTION_ERROR:
            raise EditError(f"{record.id}/{record.observation}: the re-rendered frame differs from the image on disk "
                            f"(mean error {error:.1f}); wrong sim seed?")
        scene, state, item = ep.plan.scene, ep.state_at(t), ep.plan.scene.item(ep.plan.manip)
        occlude = proposal.strategy == "occlusion_removal" and not _REMOVE_WORDS.search(proposal.instruction)
        if not occlude:
            scene = self._edited_scene(scene, item, proposal)
        out = render(scene_solids(scene, state), scene.camera(camera), ep.image_size, scene.background)
        if occlude:
            out = self._occlude(out, ep, camera, t, item, state)
        changed = (np.abs(np.asarray(out, int) - original.astype(int)).max(axis=2) > 40).mean()
        if changed < MIN_CHANGED:
            raise EditError(f"{record.id}/{record.observation}: the {proposal.strategy} edit is not visible from "
                            f"{camera} ({changed:.2%} of pixels changed)")
        return out

    @staticmethod
    def _edited_scene(scene, item, proposal: EditProposal):
        from data_construction.sim.scene import COLORS

        if proposal.strategy == "color_change":
            named = [w for w in re.findall(r"[a-z]+", proposal.instruction.lower()) if w in COLORS and w != item.color]
            used = {it.color for it in scene.items}
            options = named or [c for c in COLORS if c not in used] or [c for c in COLORS if c != item.color]
            return scene.with_item(item.key, color=options[0])
        if proposal.strategy == "object_replacement":
            r = float(min(item.half[:2]))
            kind = "cube" if item.kind == "cylinder" else "cylinder"
            return scene.with_item(item.key, kind=kind, noun=kind, half=(r, r, item.half[2]))
        return scene.without_item(item.key)

    def _occlude(self, img: Image.Image, ep, camera: str, t: int, item, state) -> Image.Image:
        from data_construction.sim.render import project_bbox
        from data_construction.sim.scene import item_solids

        size = ep.image_size
        x0, y0, x1, y1 = project_bbox(item_solids(item, np.asarray(state[f"pos:{item.key}"])),
                                      ep.plan.scene.camera(camera), size)
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0, 0.16 * size) * 0.75
        box = [int(max(0, cx - half)), int(max(0, cy - half)), int(min(size, cx + half)), int(min(size, cy + half))]
        rng = np.random.default_rng([self.seed, zlib.crc32(f"{ep.id}/{camera}/{t}".encode())])
        h, w = box[3] - box[1], box[2] - box[0]
        patch = np.clip(128 + rng.normal(0, 12, (h, w, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
        out = img.copy()
        out.paste(Image.fromarray(patch), box[:2])
        return out

