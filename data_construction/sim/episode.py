"""A sim episode: a scripted Plan seen as raw frame sequences per camera, rendered on demand, with image edits."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from data_construction.sim.render import project_bbox, render
from data_construction.sim.scene import CAMERA_NAMES, COLORS, item_solids, lerp_state, scene_solids
from data_construction.sim.tasks import Plan

EDIT_KINDS = ("color", "replace", "remove", "occlude")
MIN_CHANGED = 0.002  # fraction of pixels an object edit must visibly change, else the frame is occluded instead


@dataclass
class SimEpisode:
    """Implements the Episode interface of data_construction.construct (frames, key frames, step texts, edits)."""

    id: str
    plan: Plan
    image_size: int = 224
    data_source: str = "progressbench_sim"
    cameras: tuple = CAMERA_NAMES
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        p = self.plan
        self.waypoint_frames = [0] + np.cumsum(p.action_frames).tolist()
        self.key_frames = [0] + [self.waypoint_frames[e + 1] for e in p.step_ends]
        starts = [0] + [e + 1 for e in p.step_ends[:-1]]
        self.steps = [", then ".join(p.actions[a:e + 1]) for a, e in zip(starts, p.step_ends)]
        self.goal = p.goal
        self.num_frames = self.waypoint_frames[-1] + 1
        self.object_noun = p.scene.item(p.manip).noun
        self.scene_nouns = frozenset(it.noun for it in p.scene.items)

    def __getstate__(self):  # do not ship rendered images to worker processes
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def action_at(self, t: int) -> tuple[int, float]:
        """Index of the action running at frame t and the fraction of it done."""
        wf = self.waypoint_frames
        if not 0 <= t < self.num_frames:
            raise IndexError(f"frame {t} outside 0..{self.num_frames - 1} in episode {self.id}")
        a = min(int(np.searchsorted(wf, t, side="right")) - 1, len(wf) - 2)
        return a, (t - wf[a]) / (wf[a + 1] - wf[a])

    def state_at(self, t: int) -> dict:
        a, f = self.action_at(t)
        return lerp_state(self.plan.states[a], self.plan.states[a + 1], f)

    def frame(self, camera: str, t: int) -> Image.Image:
        key = (camera, t, False)
        if key not in self._cache:
            scene = self.plan.scene
            self._cache[key] = render(scene_solids(scene, self.state_at(t)), scene.camera(camera), self.image_size,
                                      scene.background)
        return self._cache[key]

    def editable_frames(self, camera: str):
        return None  # any frame can be edited by re-rendering

    def _edit_rng(self, camera: str, t: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([zlib.crc32(self.id.encode()), zlib.crc32(camera.encode()), t, stream])

    def edit_kind(self, camera: str, t: int) -> str:
        """The edit of this frame; an object edit hidden in this view (e.g. behind the arm) becomes an occlusion."""
        key = ("kind", camera, t)
        if key not in self._cache:
            is_lid = self.plan.scene.item(self.plan.manip).kind == "lid"
            kinds = [k for k in EDIT_KINDS if not (k == "replace" and is_lid)]
            kind = kinds[int(self._edit_rng(camera, t).integers(len(kinds)))]
            if kind != "occlude":
                scene, _ = self._edit_scene(kind, camera, t)
                cam, state = scene.camera(camera), self.state_at(t)
                edited = np.asarray(render(scene_solids(scene, state), cam, self.image_size, scene.background), int)
                changed = (np.abs(edited - np.asarray(self.frame(camera, t), int)).max(axis=2) > 40).mean()
                if changed < MIN_CHANGED:
                    kind = "occlude"
                else:
                    self._cache[(camera, t, True)] = Image.fromarray(edited.astype(np.uint8))
            self._cache[key] = kind
        return self._cache[key]

    def edited_scene(self, camera: str, t: int):
        """The scene with the edit of this frame applied, and a sentence saying what changed."""
        return self._edit_scene(self.edit_kind(camera, t), camera, t)

    def _edit_scene(self, kind: str, camera: str, t: int):
        scene, m = self.plan.scene, self.plan.scene.item(self.plan.manip)
        rng = self._edit_rng(camera, t, stream=1)
        if kind == "color":
            used = {it.color for it in scene.items}
            options = [c for c in COLORS if c not in used] or [c for c in COLORS if c != m.color]
            new = options[int(rng.integers(len(options)))]
            return scene.with_item(m.key, color=new), f"the {m.noun} is {new}, not {m.color}"
        if kind == "replace":
            r = float(min(m.half[:2]))
            if m.kind == "cylinder":
                scene = scene.with_item(m.key, kind="cube", noun="cube", half=(r, r, m.half[2]))
                return scene, f"a {m.color} cube stands where the {m.phrase} should be"
            scene = scene.with_item(m.key, kind="cylinder", noun="cylinder", half=(r, r, m.half[2]))
            return scene, f"a {m.color} cylinder stands where the {m.phrase} should be"
        if kind == "remove":
            return scene.without_item(m.key), f"there is no {m.phrase} anywhere in the scene"
        return scene, f"a gray patch hides the area where the {m.phrase} should be"

    def edited_frame(self, camera: str, t: int) -> Image.Image:
        key = (camera, t, True)
        kind = self.edit_kind(camera, t)  # caches the re-rendered image of object edits
        if key not in self._cache:
            scene, _ = self._edit_scene(kind, camera, t)
            cam, size, state = scene.camera(camera), self.image_size, self.state_at(t)
            img = render(scene_solids(scene, state), cam, size, scene.background)
            if kind == "occlude":
                img = self._occlude(img, camera, t, state)
            self._cache[key] = img
        return self._cache[key]

    def _occlude(self, img: Image.Image, camera: str, t: int, state: dict) -> Image.Image:
        """Covers the manipulated object (and what holds it) with a textured gray patch."""
        m = self.plan.scene.item(self.plan.manip)
        size = self.image_size
        solids = item_solids(m, np.asarray(state[f"pos:{m.key}"]))
        x0, y0, x1, y1 = project_bbox(solids, self.plan.scene.camera(camera), size)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = max(x1 - x0, y1 - y0, 0.16 * size) * 0.75
        box = [int(max(0, cx - half)), int(max(0, cy - half)), int(min(size, cx + half)), int(min(size, cy + half))]
        rng = self._edit_rng(camera, t)
        h, w = box[3] - box[1], box[2] - box[0]
        patch = np.clip(128 + rng.normal(0, 12, (h, w, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
        out = img.copy()
        out.paste(Image.fromarray(patch), box[:2])
        return out
