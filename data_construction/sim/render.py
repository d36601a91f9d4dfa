"""Pinhole-camera rendering of boxes and cylinders with the painter's algorithm (NumPy + PIL)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPERSAMPLE = 2  # draw at 2x and downsample: cheap anti-aliasing
CYL_SIDES = 16
LIGHT = np.array([-0.35, -0.45, 0.82]) / np.linalg.norm([-0.35, -0.45, 0.82])
AMBIENT, DIFFUSE = 0.5, 0.5
_CORNERS = np.array([[x, y, z] for z in (-1, 1) for y in (-1, 1) for x in (-1, 1)], float)
_UNIT_CUBE = _CORNERS[[(0, 2, 3, 1), (4, 5, 7, 6), (0, 1, 5, 4), (2, 6, 7, 3), (0, 4, 6, 2), (1, 3, 7, 5)]]  # 6 quads
_ANGLES = np.linspace(0, 2 * np.pi, CYL_SIDES, endpoint=False)
_UNIT_RING = np.stack([np.cos(_ANGLES), np.sin(_ANGLES), np.zeros(CYL_SIDES)], axis=1)


@dataclass(frozen=True)
class Solid:
    """A closed convex solid: shape "box" (half sizes along its axes) or "cyl" (radius half[0], half height half[2]).

    axes: 3x3 rotation whose columns are the solid's local x, y, z in world coordinates.
    flat: drawn in the ground layer (before shadows and solids), e.g. the table top and mats.
    """

    name: str
    shape: str
    center: tuple
    half: tuple
    color: tuple
    axes: tuple = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    flat: bool = False
    shadow: bool = True


def yaw_axes(yaw: float) -> tuple:
    c, s = float(np.cos(yaw)), float(np.sin(yaw))
    return ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))


def segment_axes(a, b) -> tuple[tuple, float]:
    """Axes of a link from a to b (local z along the link) and its length."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    length = float(np.linalg.norm(b - a))
    z = (b - a) / max(length, 1e-9)
    ref = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(ref, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return tuple(map(tuple, np.stack([x, y, z], axis=1))), length


def solid_faces(solid: Solid) -> list[np.ndarray]:
    """Faces as (n, 3) world-space polygons, counter-clockwise seen from outside."""
    rot = np.asarray(solid.axes, float)
    c, h = np.asarray(solid.center, float), np.asarray(solid.half, float)
    if solid.shape == "box":
        return list((_UNIT_CUBE * h) @ rot.T + c)
    if solid.shape == "cyl":
        ring = _UNIT_RING * [h[0], h[1], 0.0]
        bottom = (ring + [0, 0, -h[2]]) @ rot.T + c
        top = (ring + [0, 0, h[2]]) @ rot.T + c
        faces = [top, bottom[::-1]]
        for i in range(CYL_SIDES):
            j = (i + 1) % CYL_SIDES
            faces.append(np.stack([bottom[i], bottom[j], top[j], top[i]]))
        return faces
    raise ValueError(f"unknown solid shape {solid.shape!r} for {solid.name!r}")


@dataclass(frozen=True)
class Camera:
    name: str
    eye: tuple
    target: tuple
    fov_deg: float = 50.0

    def basis(self) -> np.ndarray:
        """Rows: right, down, forward (camera looks along +forward)."""
        eye, target = np.asarray(self.eye, float), np.asarray(self.target, float)
        fwd = target - eye
        fwd /= np.linalg.norm(fwd)
        up = np.array([0.0, 0.0, 1.0]) if abs(fwd[2]) < 0.99 else np.array([0.0, 1.0, 0.0])
        right = np.cross(fwd, up)
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        return np.stack([right, down, fwd])

    def project(self, points: np.ndarray, size: int, basis: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """World points (n, 3) -> pixel coordinates (n, 2) for a size x size image, and depth (n,)."""
        basis = self.basis() if basis is None else basis
        cam = (np.asarray(points, float) - np.asarray(self.eye, float)) @ basis.T
        depth = cam[:, 2]
        f = 0.5 * size / np.tan(np.radians(self.fov_deg) / 2)
        z = np.maximum(depth, 1e-3)
        uv = np.stack([f * cam[:, 0] / z + size / 2, f * cam[:, 1] / z + size / 2], axis=1)
        return uv, depth


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (monotone chain) of 2-D points."""
    pts = sorted(set(map(tuple, np.round(points, 5))))
    if len(pts) < 3:
        return np.array(pts)

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1])


def render(solids: list[Solid], camera: Camera, size: int, background: tuple, table_z: float = 0.0) -> Image.Image:
    """Renders solids seen from camera: ground layer, vertical-drop shadows on the table, then solids far to near."""
    big = size * SUPERSAMPLE
    img = Image.new("RGB", (big, big), tuple(background))
    draw = ImageDraw.Draw(img)
    eye = np.asarray(camera.eye, float)

    basis = camera.basis()

    def faces_of(group):
        """Visible faces as (distance to the eye, pixel polygon, shaded color), all solids projected at once."""
        polys, colors = [], []
        for s in group:
            faces = solid_faces(s)
            polys += faces
            colors += [s.color] * len(faces)
        if not polys:
            return []
        first = np.stack([p[:3] for p in polys])
        normal = np.cross(first[:, 1] - first[:, 0], first[:, 2] - first[:, 0])
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        centroid = np.stack([p.mean(axis=0) for p in polys])
        sizes = [len(p) for p in polys]
        uv, depth = camera.project(np.concatenate(polys), big, basis)
        bounds = np.cumsum([0] + sizes)
        facing = np.einsum("ij,ij->i", normal, centroid - eye) < 0  # back faces are culled
        dist = np.linalg.norm(centroid - eye, axis=1)
        light = AMBIENT + DIFFUSE * np.maximum(0.0, normal @ LIGHT)
        out = []
        for i in np.flatnonzero(facing):
            a, b = bounds[i], bounds[i + 1]
            if (depth[a:b] <= 1e-3).any():
                continue
            color = tuple(int(min(255, round(ch * light[i]))) for ch in colors[i])
            out.append((float(dist[i]), [tuple(p) for p in uv[a:b]], color))
        return out

    ground = [s for s in solids if s.flat]
    for _, uv, color in sorted(faces_of(ground), key=lambda f: -f[0]):
        draw.polygon(uv, fill=color)

    mask = Image.new("L", (big, big), 0)
    mdraw = ImageDraw.Draw(mask)
    for s in solids:
        if s.flat or not s.shadow:
            continue
        pts = np.concatenate(solid_faces(s))
        pts = pts.copy()
        pts[:, 2] = table_z + 1e-3
        uv, depth = camera.project(pts, big, basis)
        if (depth > 1e-3).all():
            hull = _hull(uv)
            if len(hull) >= 3:
                mdraw.polygon([tuple(p) for p in hull], fill=90)
    dark = Image.new("RGB", (big, big), (0, 0, 0))
    img = Image.composite(dark, img, mask)
    draw = ImageDraw.Draw(img)

    solid_faces_sorted = sorted(faces_of([s for s in solids if not s.flat]), key=lambda f: -f[0])
    for _, uv, color in solid_faces_sorted:
        draw.polygon(uv, fill=color)
    return img.reduce(SUPERSAMPLE)


def project_bbox(solids: list[Solid], camera: Camera, size: int) -> tuple[int, int, int, int]:
    """Pixel bounding box (x0, y0, x1, y1) of the given solids in a size x size image."""
    pts = np.concatenate([np.concatenate(solid_faces(s)) for s in solids])
    uv, _ = camera.project(pts, size)
    x0, y0 = np.floor(uv.min(axis=0)).astype(int)
    x1, y1 = np.ceil(uv.max(axis=0)).astype(int)
    return max(0, x0), max(0, y0), min(size, x1), min(size, y1)
