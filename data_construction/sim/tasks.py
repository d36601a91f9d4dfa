"""Task families: each builds a scene and a scripted sequence of waypoint states with action texts.

Actions are grouped into key steps (several short actions may form one step); raw frames interpolate the
state linearly between waypoints, so progress is linear in time inside each action.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_construction.sim.scene import (COLORS, OPEN_WIDTH, TABLES, BACKGROUNDS, Arm, Item, Layout, Scene,
                                     drawer_handle, make_cameras)

FAMILIES = ("pick_place", "stack", "push", "drawer", "lid", "sort")
HOVER, LIFT, CARRY_Z = 0.14, 0.15, 0.26
FRAMES_PER_ACTION = (10, 19)  # >= 10 so every fine delta (0.1 ... 0.9) lands on its own frame
MAX_STEPS = 8


@dataclass
class Plan:
    """A scripted episode before rendering."""

    family: str
    scene: Scene
    goal: str
    actions: list[str]  # one text per action
    states: list[dict]  # len(actions) + 1 waypoints
    action_frames: list[int]  # frames per action
    step_ends: list[int]  # index (into actions) of the last action of each key step
    manip: str  # item key of the manipulated object
    target: str | None  # item key of its destination, if any


class Script:
    def __init__(self, rng, scene_items, arms):
        self.rng, self.items, self.arms = rng, {it.key: it for it in scene_items}, arms
        self.state = {}
        self.actions, self.states = [], []

    def start(self, positions: dict, drawer: bool = False):
        for key, p in positions.items():
            self.state[f"pos:{key}"] = np.asarray(p, float)
        for i, arm in enumerate(self.arms):
            self.state[f"grip:{i}"] = np.array([arm.base[0] * 0.8, 0.2, 0.34])
            self.state[f"width:{i}"] = np.array([OPEN_WIDTH])
        if drawer:
            self.state["drawer"] = np.zeros(1)
        self.states = [dict(self.state)]

    def pos(self, key):
        return self.state[f"pos:{key}"].copy()

    def grip(self, arm):
        return self.state[f"grip:{arm}"].copy()

    def act(self, text: str, moves: list[tuple]):
        """moves: (arm, new grip point, new width or None, carried item key or None), applied together."""
        new = dict(self.state)
        for arm, point, width, carry in moves:
            point = np.asarray(point, float)
            if carry is not None:
                new[f"pos:{carry}"] = self.state[f"pos:{carry}"] + (point - self.state[f"grip:{arm}"])
            new[f"grip:{arm}"] = point
            if width is not None:
                new[f"width:{arm}"] = np.array([width])
        self.state = new
        self.actions.append(text)
        self.states.append(dict(new))

    def set(self, key, value):
        """Changes a state entry of the last waypoint (e.g. the drawer moving with the gripper)."""
        self.state[key] = np.asarray(value, float)
        self.states[-1] = dict(self.state)


def _marker(arm: Arm) -> str:
    return f"[{arm.side}] " if arm.side else ""


def _grip_width(item: Item) -> float:
    return 2 * item.half[0]


def _pick_actions(s: Script, arm: int, m: str, dest: np.ndarray, dest_phrase: str, verb: str, prep: str = "on"):
    """Move above, grasp, lift, carry over the destination, put down, release and retract."""
    it, mk = s.items[m], _marker(s.arms[arm])
    p = s.pos(m)
    s.act(f"{mk}move the gripper above the {it.phrase}", [(arm, p + [0, 0, HOVER], OPEN_WIDTH, None)])
    s.act(f"{mk}{verb} the {it.phrase}", [(arm, p, _grip_width(it), None)])
    s.act(f"{mk}lift the {it.phrase}", [(arm, p + [0, 0, LIFT], None, m)])
    s.act(f"{mk}carry the {it.phrase} over the {dest_phrase}", [(arm, [dest[0], dest[1], CARRY_Z + dest[2]], None, m)])
    s.act(f"{mk}put the {it.phrase} {prep} the {dest_phrase}", [(arm, dest, None, m)])
    s.act(f"{mk}release the {it.phrase} and raise the gripper", [(arm, dest + [0, 0, HOVER], OPEN_WIDTH, None)])


class _Builder:
    """Shared random choices: colors, solids, layout, arms."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.layout = Layout(rng)
        self.colors = list(rng.permutation(list(COLORS)))
        self.items: list[Item] = []

    def color(self) -> str:
        return self.colors.pop()

    def add(self, noun, kind, half, pos_xy=None, color=None, yaw=0.0, z=None, radius=None, **area):
        """area: x=(lo, hi), y=(lo, hi) limits for the free-spot search."""
        key = f"item{len(self.items)}"
        item = Item(key, noun, color or self.color(), kind, tuple(float(h) for h in half), float(yaw))
        if pos_xy is None:
            pos_xy = self.layout.place(radius or float(np.hypot(half[0], half[1])), **area)
        self.items.append(item)
        return item, np.array([pos_xy[0], pos_xy[1], half[2] if z is None else z], float)

    def small_object(self, **kw):
        kind = self.rng.choice(["cube", "cylinder", "block"])
        if kind == "cube":
            h = self.rng.uniform(0.032, 0.04)
            return self.add("cube", "cube", (h, h, h), yaw=self.rng.uniform(-0.5, 0.5), **kw)
        if kind == "block":
            return self.add("block", "block", (0.033, 0.055, 0.035), yaw=self.rng.uniform(-0.3, 0.3), **kw)
        r = self.rng.uniform(0.03, 0.036)
        return self.add("cylinder", "cylinder", (r, r, self.rng.uniform(0.045, 0.055)), **kw)

    def distractors(self, positions: dict, n: int | None = None):
        for _ in range(self.rng.integers(1, 4) if n is None else n):
            if not self.colors:
                break
            try:
                if self.rng.random() < 0.7:
                    it, p = self.small_object()
                else:
                    r = self.rng.uniform(0.04, 0.055)
                    it, p = self.add("can", "cylinder", (r, r, self.rng.uniform(0.06, 0.08)))
            except RuntimeError:
                break  # table full: fewer distractors
            positions[it.key] = p

    def arms(self, dual: bool, yaw: float = 0.0) -> tuple[Arm, ...]:
        if dual:
            return (Arm("left", (-0.25, 0.42), yaw), Arm("right", (0.25, 0.42), yaw))
        return (Arm("", (0.0, 0.42), yaw),)

    def scene(self, arms, drawer_key=None) -> Scene:
        table = TABLES[self.rng.integers(len(TABLES))]
        bg = BACKGROUNDS[self.rng.integers(len(BACKGROUNDS))]
        return Scene(tuple(self.items), arms, table, bg, make_cameras(self.rng), drawer_key)


def _target(b: _Builder):
    kind = b.rng.choice(["plate", "tray", "mat"])
    if kind == "plate":
        r = b.rng.uniform(0.075, 0.09)
        return b.add("plate", "plate", (r, r, 0.008))
    if kind == "tray":
        return b.add("tray", "tray", (0.1, 0.08, 0.025))
    return b.add("mat", "mat", (0.09, 0.09, 0.001))


def _surface(item: Item, center: np.ndarray) -> float:
    return float(center[2] + item.top)


def _arm_for(x: float, arms) -> int:
    return 0 if len(arms) == 1 or x < 0 else 1


def pick_place(rng) -> tuple:
    b = _Builder(rng)
    m, pm = b.small_object()
    t, pt = _target(b)
    pos = {m.key: pm, t.key: pt}
    b.distractors(pos)
    arms = b.arms(dual=rng.random() < 0.4)
    s = Script(rng, b.items, arms)
    s.start(pos)
    dest = np.array([pt[0], pt[1], _surface(t, pt) + m.half[2]])
    verb = rng.choice(["grasp", "grab", "pick up"])
    prep = "in" if t.kind == "tray" else "on"
    _pick_actions(s, _arm_for(pm[0], arms), m.key, dest, t.phrase, verb, prep)
    return b, s, f"put the {m.phrase} {prep} the {t.phrase}", m.key, t.key, arms


def stack(rng) -> tuple:
    b = _Builder(rng)
    h = rng.uniform(0.032, 0.038)
    count = 3 if rng.random() < 0.5 else 2
    cubes = [b.add("cube", "cube", (h, h, h), yaw=rng.uniform(-0.4, 0.4)) for _ in range(count)]
    pos = {it.key: p for it, p in cubes}
    b.distractors(pos, n=int(rng.integers(0, 3)))
    arms = b.arms(dual=rng.random() < 0.3)
    s = Script(rng, b.items, arms)
    s.start(pos)
    (top, ptop), (base, pbase) = cubes[0], cubes[1]
    verb = rng.choice(["grasp", "grab", "pick up"])
    _pick_actions(s, _arm_for(ptop[0], arms), top.key, pbase + [0, 0, 2 * h], base.phrase, verb)
    goal = f"stack the {top.phrase} on the {base.phrase}"
    if len(cubes) == 3:
        third, p3 = cubes[2]
        _pick_actions(s, _arm_for(p3[0], arms), third.key, pbase + [0, 0, 4 * h], top.phrase, verb)
        goal += f", then the {third.phrase} on the {top.phrase}"
    return b, s, goal, top.key, base.key, arms


def push(rng) -> tuple:
    b = _Builder(rng)
    m, pm = b.small_object()
    for _ in range(100):
        z, pz = b.add("zone", "mat", (0.09, 0.09, 0.001))
        d = pz[:2] - pm[:2]
        if 0.18 < np.linalg.norm(d) < 0.34:
            break
        b.colors.append(b.items.pop().color)  # rejected: free its color and spot
        b.layout.taken.pop()
    else:
        raise RuntimeError("no push target found")
    pos = {m.key: pm, z.key: np.array([pz[0], pz[1], 0.001])}
    b.distractors(pos)
    arms = b.arms(dual=rng.random() < 0.3)
    s = Script(rng, b.items, arms)
    s.start(pos)
    arm, mk = _arm_for(pm[0], arms), _marker(arms[_arm_for(pm[0], arms)])
    u = np.append(d / np.linalg.norm(d), 0.0)
    behind = pm - u * (max(m.half[:2]) + 0.035)
    half_way = pm + [(pz[0] - pm[0]) / 2, (pz[1] - pm[1]) / 2, 0]
    closed = 0.015
    s.act(f"{mk}move the gripper behind the {m.phrase}", [(arm, behind + [0, 0, HOVER], closed, None)])
    s.act(f"{mk}lower the gripper to the table behind the {m.phrase}", [(arm, behind, None, None)])
    s.act(f"{mk}push the {m.phrase} toward the {z.phrase}", [(arm, behind + (half_way - pm), None, m.key)])
    s.act(f"{mk}push the {m.phrase} into the {z.phrase}",
          [(arm, behind + [pz[0] - pm[0], pz[1] - pm[1], 0], None, m.key)])
    s.act(f"{mk}lift the gripper away from the {m.phrase}", [(arm, s.grip(arm) + [0, 0, LIFT], None, None)])
    return b, s, f"push the {m.phrase} into the {z.phrase}", m.key, z.key, arms


def drawer(rng) -> tuple:
    b = _Builder(rng)
    cab, pc = b.add("drawer", "cabinet", (0.14, 0.1, 0.09), pos_xy=(rng.uniform(-0.16, 0.16), 0.16), radius=0.2)
    b.layout.taken.append((np.array([pc[0], 0.06]), 0.2))  # the cabinet and the drawer's path
    m, pm = b.small_object(y=(-0.22, -0.1))
    pos = {cab.key: pc, m.key: pm}
    b.distractors(pos, n=int(rng.integers(0, 2)))
    arms = b.arms(dual=False, yaw=np.pi / 2)
    s = Script(rng, b.items, arms)
    s.start(pos, drawer=True)
    opening = 0.14
    handle = drawer_handle(cab, pc, 0.0)
    s.act(f"move the gripper to the handle of the {cab.phrase}", [(0, handle + [0, -0.02, HOVER], OPEN_WIDTH, None)])
    s.act("grasp the handle", [(0, handle, 0.026, None)])
    s.act(f"pull the {cab.phrase} open", [(0, handle - [0, opening, 0], None, None)])
    s.set("drawer", [opening])
    s.act("release the handle and raise the gripper", [(0, handle - [0, opening, -HOVER], OPEN_WIDTH, None)])
    inside = drawer_handle(cab, pc, opening) + [0, 0.018 + cab.half[1] * 0.9, 0]
    dest = np.array([inside[0], inside[1], pc[2] - cab.half[2] + 0.024 + m.half[2]])
    verb = rng.choice(["grasp", "grab", "pick up"])
    _pick_actions(s, 0, m.key, dest, f"open {cab.noun}", verb, "into")
    return b, s, f"open the {cab.phrase} and put the {m.phrase} inside", m.key, cab.key, arms


def lid(rng) -> tuple:
    b = _Builder(rng)
    r = rng.uniform(0.065, 0.08)
    pot, pp = b.add("pot", "pot", (r, r, rng.uniform(0.045, 0.06)))
    cover = rng.random() < 0.6
    lid_it, pl = b.add("lid", "lid", (r + 0.01, r + 0.01, 0.007))
    on_pot = np.array([pp[0], pp[1], 2 * pot.half[2] + lid_it.half[2]])
    start, dest = (pl, on_pot) if cover else (on_pot, pl)
    pos = {pot.key: pp, lid_it.key: start}
    b.distractors(pos, n=int(rng.integers(0, 3)))
    arms = b.arms(dual=rng.random() < 0.3)
    s = Script(rng, b.items, arms)
    s.start(pos)
    arm = _arm_for(start[0], arms)
    mk = _marker(arms[arm])
    knob = np.array([0, 0, lid_it.half[2] + 0.012])
    s.act(f"{mk}move the gripper above the {lid_it.phrase}", [(arm, start + knob + [0, 0, HOVER], OPEN_WIDTH, None)])
    s.act(f"{mk}grasp the knob of the {lid_it.phrase}", [(arm, start + knob, 0.032, None)])
    s.act(f"{mk}lift the {lid_it.phrase}", [(arm, start + knob + [0, 0, LIFT], None, lid_it.key)])
    where = f"the {pot.phrase}" if cover else "the table"
    s.act(f"{mk}carry the {lid_it.phrase} over {where}",
          [(arm, [dest[0], dest[1], dest[2] + knob[2] + LIFT], None, lid_it.key)])
    s.act(f"{mk}lower the {lid_it.phrase} onto {where}", [(arm, dest + knob, None, lid_it.key)])
    s.act(f"{mk}release the {lid_it.phrase} and raise the gripper",
          [(arm, dest + knob + [0, 0, HOVER], OPEN_WIDTH, None)])
    if cover:
        goal = f"cover the {pot.phrase} with the {lid_it.phrase}"
    else:
        goal = f"take the {lid_it.phrase} off the {pot.phrase} and put it on the table"
    return b, s, goal, lid_it.key, pot.key, arms


def sort(rng) -> tuple:
    b = _Builder(rng)
    left, pl = b.small_object(x=(-0.34, -0.05))
    right, pr = b.small_object(x=(0.05, 0.34))
    b.colors = [c for c in b.colors if c not in (left.color, right.color)]
    tl, ptl = _tray(b, left.color, (-0.34, -0.07))
    tr, ptr = _tray(b, right.color, (0.07, 0.34))
    pos = {left.key: pl, right.key: pr, tl.key: ptl, tr.key: ptr}
    b.distractors(pos, n=int(rng.integers(0, 2)))
    arms = b.arms(dual=True)
    s = Script(rng, b.items, arms)
    s.start(pos)
    dl = np.array([ptl[0], ptl[1], _surface(tl, ptl) + left.half[2]])
    dr = np.array([ptr[0], ptr[1], _surface(tr, ptr) + right.half[2]])
    L, R = left.phrase, right.phrase
    s.act(f"[left] move above the {L} and [right] move above the {R}",
          [(0, pl + [0, 0, HOVER], OPEN_WIDTH, None), (1, pr + [0, 0, HOVER], OPEN_WIDTH, None)])
    s.act(f"[left] grasp the {L} and [right] grasp the {R}",
          [(0, pl, _grip_width(left), None), (1, pr, _grip_width(right), None)])
    s.act(f"[left] lift the {L} and [right] lift the {R}",
          [(0, pl + [0, 0, LIFT], None, left.key), (1, pr + [0, 0, LIFT], None, right.key)])
    s.act(f"[left] carry the {L} over the {tl.phrase} and [right] carry the {R} over the {tr.phrase}",
          [(0, [dl[0], dl[1], CARRY_Z], None, left.key), (1, [dr[0], dr[1], CARRY_Z], None, right.key)])
    s.act(f"[left] put the {L} in the {tl.phrase} and [right] put the {R} in the {tr.phrase}",
          [(0, dl, None, left.key), (1, dr, None, right.key)])
    s.act("[left] release and raise the gripper and [right] release and raise the gripper",
          [(0, dl + [0, 0, HOVER], OPEN_WIDTH, None), (1, dr + [0, 0, HOVER], OPEN_WIDTH, None)])
    goal = f"with both arms, sort the {L} and the {R} into the trays of the same color"
    return b, s, goal, left.key, tl.key, arms


def _tray(b: _Builder, color: str, xr):
    item = Item(f"item{len(b.items)}", "tray", color, "tray", (0.085, 0.075, 0.025))
    p = b.layout.place(0.11, x=xr, y=(-0.21, 0.17))
    b.items.append(item)
    return item, np.array([p[0], p[1], item.half[2]])


BUILDERS = {"pick_place": pick_place, "stack": stack, "push": push, "drawer": drawer, "lid": lid, "sort": sort}


def make_plan(family: str, rng: np.random.Generator) -> Plan:
    """Builds a scripted episode; retries with fresh draws from rng when a layout does not fit the table."""
    for _ in range(50):
        try:
            b, s, goal, manip, target, arms = BUILDERS[family](rng)
            break
        except RuntimeError:
            continue
    else:
        raise RuntimeError(f"could not lay out a {family} scene")
    scene = b.scene(arms, drawer_key=target if family == "drawer" else None)
    n = len(s.actions)
    frames = [int(f) for f in rng.integers(*FRAMES_PER_ACTION, size=n)]
    num_steps = int(rng.integers(max(3, -(-n // 2)), min(n, MAX_STEPS) + 1))
    cuts = sorted(rng.choice(np.arange(1, n), size=num_steps - 1, replace=False).tolist()) if num_steps > 1 else []
    step_ends = [c - 1 for c in cuts] + [n - 1]
    return Plan(family, scene, goal, list(s.actions), s.states, frames, step_ends, manip, target)
