"""3-D scene of the sim: a table (top at z = 0), items, one or two arms with parallel grippers, three cameras.

World frame: x to the right of the front camera, y away from it, z up; metres. A Scene holds the static
description; a State (dict name -> float array) holds what moves: item centres "pos:KEY", gripper points
"grip:I" (between the fingertips), gripper openings "width:I" and the drawer opening "drawer".
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from data_construction.sim.render import Camera, Solid, segment_axes, yaw_axes

COLORS = {
    "red": (205, 35, 35), "green": (30, 150, 55), "blue": (35, 75, 210), "yellow": (235, 200, 30),
    "orange": (245, 125, 20), "purple": (130, 50, 175), "pink": (245, 115, 180), "cyan": (30, 190, 205),
}
TABLES = [(205, 190, 160), (175, 145, 110), (160, 162, 168), (190, 205, 195), (220, 218, 210)]
BACKGROUNDS = [(85, 95, 115), (60, 62, 72), (115, 105, 95), (75, 92, 82), (135, 145, 160)]
LINK_COLOR, PALM_COLOR, FINGER_COLOR = (72, 74, 80), (225, 225, 230), (35, 35, 38)
TABLE_HALF = (0.46, 0.34)
CAMERA_NAMES = ("camera_front", "camera_top", "camera_left")
SHOULDER_HEIGHT, LINK_LENGTH = 0.34, 0.40
FINGER_HALF = (0.009, 0.016, 0.03)
OPEN_WIDTH = 0.13


@dataclass(frozen=True)
class Item:
    key: str
    noun: str
    color: str
    kind: str  # cube, block, cylinder, plate, tray, mat, pot, lid, cabinet
    half: tuple  # box half sizes, or (radius, radius, half height)
    yaw: float = 0.0

    @property
    def phrase(self) -> str:
        return f"{self.color} {self.noun}"

    @property
    def rgb(self) -> tuple:
        return COLORS[self.color]

    @property
    def top(self) -> float:
        """Height of the surface things rest on, relative to the item's centre."""
        return -self.half[2] + 0.012 if self.kind in ("tray", "cabinet") else self.half[2]


@dataclass(frozen=True)
class Arm:
    side: str  # "left", "right" or "" for a single-arm robot
    base: tuple
    yaw: float = 0.0  # gripper rotation about z (fingers open along rotated x)


@dataclass(frozen=True)
class Scene:
    items: tuple[Item, ...]
    arms: tuple[Arm, ...]
    table_rgb: tuple
    background: tuple
    cameras: tuple[Camera, ...]
    drawer_key: str | None = None  # the cabinet whose drawer moves with state["drawer"]

    def item(self, key: str) -> Item:
        for it in self.items:
            if it.key == key:
                return it
        raise KeyError(key)

    def camera(self, name: str) -> Camera:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(name)

    def with_item(self, key: str, **changes) -> "Scene":
        return replace(self, items=tuple(replace(it, **changes) if it.key == key else it for it in self.items))

    def without_item(self, key: str) -> "Scene":
        return replace(self, items=tuple(it for it in self.items if it.key != key))


def make_cameras(rng: np.random.Generator) -> tuple[Camera, ...]:
    """Front, top and left cameras with a small per-episode jitter of the eye position."""
    def jit(p):
        return tuple(float(v) for v in np.asarray(p) + rng.uniform(-0.04, 0.04, 3))

    return (
        Camera("camera_front", jit((0.0, -0.7, 0.52)), (0.0, 0.02, 0.03), 54.0),
        Camera("camera_top", jit((0.0, -0.1, 0.98)), (0.0, -0.01, 0.0), 50.0),
        Camera("camera_left", jit((-0.7, -0.32, 0.5)), (0.03, 0.0, 0.03), 54.0),
    )


def _box(name, center, half, color, yaw=0.0, **kw) -> Solid:
    return Solid(name, "box", tuple(map(float, center)), tuple(map(float, half)), tuple(color), yaw_axes(yaw), **kw)


def _cyl(name, center, radius, half_h, color, **kw) -> Solid:
    return Solid(name, "cyl", tuple(map(float, center)), (radius, radius, half_h), tuple(color), **kw)


def _open_box(name, center, half, color, yaw=0.0, wall=0.01) -> list[Solid]:
    """Floor and four walls: a tray, bin or drawer whose contents stay visible from above."""
    c, (hx, hy, hz) = np.asarray(center, float), half
    rot = np.asarray(yaw_axes(yaw))
    shade = tuple(int(v * 0.8) for v in color)
    parts = [_box(name, c + rot @ [0, 0, -hz + wall / 2], (hx, hy, wall / 2), shade, yaw)]
    for sx, sy, wx, wy in ((1, 0, wall / 2, hy), (-1, 0, wall / 2, hy), (0, 1, hx, wall / 2), (0, -1, hx, wall / 2)):
        offset = rot @ [sx * (hx - wall / 2), sy * (hy - wall / 2), 0]
        parts.append(_box(name, c + offset, (wx, wy, hz), color, yaw))
    return parts


def item_solids(item: Item, center: np.ndarray, drawer: float = 0.0) -> list[Solid]:
    rgb, h = item.rgb, item.half
    if item.kind in ("cube", "block"):
        return [_box(item.key, center, h, rgb, item.yaw)]
    if item.kind == "cylinder":
        return [_cyl(item.key, center, h[0], h[2], rgb)]
    if item.kind == "plate":
        return [_cyl(item.key, center, h[0], h[2], rgb), _cyl(item.key, center + [0, 0, h[2]], h[0] * 0.7, 0.001,
                                                           tuple(int(v * 0.85) for v in rgb), shadow=False)]
    if item.kind == "mat":
        return [_box(item.key, center, h, rgb, item.yaw, flat=True)]
    if item.kind == "tray":
        return _open_box(item.key, center, h, rgb, item.yaw)
    if item.kind == "pot":
        rim = tuple(int(v * 0.45) for v in rgb)
        return [_cyl(item.key, center, h[0], h[2], rgb),
                _cyl(item.key, center + [0, 0, h[2]], h[0] * 0.82, 0.002, rim, shadow=False)]
    if item.kind == "lid":
        knob = tuple(int(v * 0.6) for v in rgb)
        return [_cyl(item.key, center, h[0], h[2], rgb),
                _cyl(item.key, center + [0, 0, h[2] + 0.012], 0.016, 0.012, knob)]
    if item.kind == "cabinet":
        body = [_box(item.key, center, h, rgb)]
        dh = (h[0] * 0.82, h[1] * 0.9, h[2] * 0.55)
        dc = center + [0, -h[1] + dh[1] - 0.006 - drawer, -h[2] + dh[2] + 0.012]
        front = tuple(int(v * 0.75) for v in rgb)
        handle = _box(item.key, dc + [0, -dh[1] - 0.018, 0.0], (0.05, 0.012, 0.01), (240, 240, 240))
        face = _box(item.key, dc + [0, -dh[1] - 0.002, 0], (dh[0] + 0.01, 0.004, dh[2] + 0.01), front)
        return body + _open_box(item.key, dc, dh, front) + [face, handle]
    raise ValueError(f"unknown item kind {item.kind!r}")


def drawer_handle(item: Item, center: np.ndarray, drawer: float) -> np.ndarray:
    h = item.half
    dh = (h[0] * 0.82, h[1] * 0.9, h[2] * 0.55)
    dc = center + [0, -h[1] + dh[1] - 0.006 - drawer, -h[2] + dh[2] + 0.012]
    return dc + [0, -dh[1] - 0.018, 0.0]


def arm_solids(arm: Arm, index: int, grip: np.ndarray, width: float) -> list[Solid]:
    """Base, two links, wrist, palm and two fingers; the elbow is solved in the vertical plane of shoulder and wrist."""
    name = f"arm{index}"
    base = np.array([arm.base[0], arm.base[1], 0.0])
    shoulder = base + [0, 0, SHOULDER_HEIGHT]
    wrist = grip + [0, 0, 0.15]
    d = wrist - shoulder
    dist = float(np.linalg.norm(d))
    u = d / max(dist, 1e-9)
    up = np.array([0.0, 0.0, 1.0]) - u[2] * u
    up = up / np.linalg.norm(up) if np.linalg.norm(up) > 1e-6 else np.array([0.0, 1.0, 0.0])
    rise = np.sqrt(max(LINK_LENGTH ** 2 - (dist / 2) ** 2, 0.0))
    elbow = shoulder + d / 2 + rise * up
    parts = [_cyl(name, base + [0, 0, 0.05], 0.06, 0.05, LINK_COLOR)]
    for a, b, w in ((base + [0, 0, 0.1], shoulder, 0.05), (shoulder, elbow, 0.045), (elbow, wrist, 0.04),
                    (wrist, grip + [0, 0, 0.05], 0.03)):
        axes, length = segment_axes(a, b)
        parts.append(Solid(name, "box", tuple((a + b) / 2), (w / 2, w / 2, length / 2), LINK_COLOR, axes))
    rot = np.asarray(yaw_axes(arm.yaw))
    parts.append(_box(name, grip + [0, 0, 0.042], (OPEN_WIDTH / 2 + 0.012, 0.022, 0.012), PALM_COLOR, arm.yaw))
    for sign in (-1, 1):
        offset = rot @ [sign * (width / 2 + FINGER_HALF[0]), 0, 0]
        parts.append(_box(name, grip + offset + [0, 0, 0.002], FINGER_HALF, FINGER_COLOR, arm.yaw))
    return parts


def scene_solids(scene: Scene, state: dict) -> list[Solid]:
    table = _box("table", (0, 0.0, -0.03), (*TABLE_HALF, 0.03), scene.table_rgb, flat=True)
    solids = [table]
    drawer = float(state.get("drawer", np.zeros(1))[0])
    for item in scene.items:
        opening = drawer if item.key == scene.drawer_key else 0.0
        solids += item_solids(item, np.asarray(state[f"pos:{item.key}"]), opening)
    for i, arm in enumerate(scene.arms):
        solids += arm_solids(arm, i, np.asarray(state[f"grip:{i}"]), float(state[f"width:{i}"][0]))
    return solids


def lerp_state(a: dict, b: dict, f: float) -> dict:
    return {k: a[k] + f * (b[k] - a[k]) for k in a}


@dataclass
class Layout:
    """Rejection sampler for free spots on the table (item footprints as circles)."""

    rng: np.random.Generator
    taken: list = field(default_factory=list)

    def place(self, radius: float, x=(-0.34, 0.34), y=(-0.21, 0.17), tries: int = 200) -> np.ndarray:
        for _ in range(tries):
            p = np.array([self.rng.uniform(*x), self.rng.uniform(*y)])
            if all(np.linalg.norm(p - q) > radius + r + 0.03 for q, r in self.taken):
                self.taken.append((p, radius))
                return p
        raise RuntimeError("no free spot on the table (scene too crowded)")
