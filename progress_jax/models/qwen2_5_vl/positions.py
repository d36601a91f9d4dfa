"""Host-side (NumPy) index computations that depend on image sizes.

These run before jit: their outputs are plain integer arrays passed into the compiled
functions, so that one compiled program serves every image layout of the same padded shape.
"""

from __future__ import annotations

import numpy as np

from .config import Qwen25VLConfig


def valid_grids(image_grid_thw) -> np.ndarray:
    """Drop the all-zero rows the data pipeline uses to pad the image count."""
    grid = np.asarray(image_grid_thw, dtype=np.int64).reshape(-1, 3)
    return grid[grid.prod(-1) > 0]


def get_rope_index(
    input_ids, image_grid_thw, attention_mask, config: Qwen25VLConfig
) -> tuple[np.ndarray, np.ndarray]:
    """M-RoPE position ids (3, B, L) and rope deltas (B, 1), as transformers' get_rope_index.

    Text tokens advance all three axes by one; an image block of merged grid (t, h, w) gets
    t index 0 and row-major h/w indices offset by the running start, and the next segment
    starts at the block's max + 1. Padding positions get 1. Images are taken in order across
    the batch.
    """
    input_ids = np.asarray(input_ids)
    B, L = input_ids.shape
    mask = np.ones_like(input_ids, dtype=bool) if attention_mask is None else np.asarray(attention_mask) > 0
    grids = iter(valid_grids(image_grid_thw) if image_grid_thw is not None else [])
    merge = config.vision.spatial_merge_size
    position_ids = np.ones((3, B, L), dtype=np.int32)
    deltas = np.zeros((B, 1), dtype=np.int32)
    for b in range(B):
        ids = input_ids[b][mask[b]]
        is_image = ids == config.image_token_id
        chunks, pos, i, n = [], 0, 0, len(ids)
        while i < n:
            j = i
            while j < n and is_image[j] == is_image[i]:
                j += 1
            if not is_image[i]:
                chunks.append(np.broadcast_to(np.arange(pos, pos + j - i), (3, j - i)))
                pos += j - i
            else:
                # One run of image-pad tokens may hold several consecutive images.
                k = i
                while k < j:
                    try:
                        t, h, w = next(grids)
                    except StopIteration:
                        raise ValueError(
                            f"sample {b}: more image-pad tokens than images in image_grid_thw"
                        ) from None
                    gt, gh, gw = int(t), int(h) // merge, int(w) // merge
                    tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
                    block = np.stack([tt.ravel(), hh.ravel(), ww.ravel()]) + pos
                    if k + block.shape[1] > j:
                        raise ValueError(
                            f"sample {b}: image of grid {(int(t), int(h), int(w))} needs {block.shape[1]} "
                            f"image-pad tokens, found {j - k}"
                        )
                    chunks.append(block)
                    pos = int(block.max()) + 1
                    k += block.shape[1]
            i = j
        pos_b = np.concatenate(chunks, axis=1) if chunks else np.zeros((3, 0), np.int64)
        position_ids[:, b, mask[b]] = pos_b
        deltas[b, 0] = (int(pos_b.max()) + 1 if pos_b.size else 0) - len(ids)
    if next(grids, None) is not None:
        raise ValueError("image_grid_thw lists more images than the input_ids hold")
    return position_ids, deltas


def vision_inputs(image_grid_thw, num_patches: int, config: Qwen25VLConfig, min_groups: int = 0
                  ) -> dict[str, np.ndarray]:
    """Index arrays for the vision tower on `num_patches` patch rows (real ones first, then padding).

    - window_index [U]: merged-unit order used inside the blocks (windows, row-major per image);
      padding units stay at the end in place. U = num_patches / merge**2.
    - reverse_index [U]: its inverse, restoring the processor's order after the merger.
    - rope_hw [P, 2]: (h, w) patch coordinates in window order, for the 2-D RoPE.
    - window_groups [W, 64], image_groups [I, N]: the positions (in window order) of each window's
      and each image's patches, -1 padded; attention runs within each row. W, I and N are rounded
      up to powers of two, W and I to at least min_groups (a batch's image bucket: every image has
      a window), so that a run compiles few shapes; padding patches are in no group.
    """
    v = config.vision
    merge, unit = v.spatial_merge_size, v.spatial_merge_size**2
    if num_patches % unit:
        raise ValueError(f"num_patches {num_patches} is not a multiple of {unit}")
    grids = valid_grids(image_grid_thw)
    real = int(grids.prod(-1).sum())
    if real > num_patches:
        raise ValueError(f"image_grid_thw needs {real} patches but pixel_values has {num_patches} rows")
    win = v.window_size // merge // v.patch_size  # window side in merged units

    window_index, hw, windows, images = [], [], [], []
    unit_offset, pos = 0, 0
    for img, (t, h, w) in enumerate(grids):
        gh, gw = h // merge, w // merge
        # (h, w) of each patch, in the processor's merge-block order.
        hp, wp = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        hp = hp.reshape(gh, merge, gw, merge).transpose(0, 2, 1, 3).reshape(-1)
        wp = wp.reshape(gh, merge, gw, merge).transpose(0, 2, 1, 3).reshape(-1)
        coords = np.tile(np.stack([hp, wp], -1), (t, 1)).reshape(t * gh * gw, unit, 2)

        units = np.arange(t * gh * gw).reshape(t, gh, gw)
        ph, pw = -gh % win, -gw % win
        padded = np.pad(units, ((0, 0), (0, ph), (0, pw)), constant_values=-1)
        nh, nw = padded.shape[1] // win, padded.shape[2] // win
        padded = padded.reshape(t, nh, win, nw, win).transpose(0, 1, 3, 2, 4).reshape(t * nh * nw, win * win)
        start = pos
        for window in padded:
            members = window[window >= 0]
            if members.size == 0:
                continue
            window_index.append(members + unit_offset)
            hw.append(coords[members].reshape(-1, 2))
            windows.append(np.arange(pos, pos + members.size * unit))
            pos += members.size * unit
        images.append(np.arange(start, pos))
        unit_offset += t * gh * gw

    num_units = num_patches // unit
    pad_units = num_units - unit_offset
    window_index.append(np.arange(unit_offset, num_units))
    hw.append(np.zeros((pad_units * unit, 2), np.int64))
    window_index = np.concatenate(window_index).astype(np.int32)
    return {
        "window_index": window_index,
        "reverse_index": np.argsort(window_index).astype(np.int32),
        "rope_hw": np.concatenate(hw).astype(np.int32),
        "window_groups": _groups(windows, (win * merge) ** 2, min_groups),
        "image_groups": _groups(images, _pow2(max((len(g) for g in images), default=1)), min_groups),
    }


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _groups(members: list[np.ndarray], width: int, min_rows: int = 1) -> np.ndarray:
    """Rows of member positions, -1 padded to [pow2(max(len(members), min_rows)), width]."""
    out = np.full((_pow2(max(len(members), min_rows, 1)), width), -1, np.int32)
    for i, m in enumerate(members):
        out[i, : len(m)] = m
    return out


GROUP_KEYS = ("window_groups", "image_groups")


def pad_groups(vision: dict, rows: int, width: int, key: str) -> np.ndarray:
    """A group array padded with -1 to [rows, width] (to stack micro-batches of one shape)."""
    g = vision[key]
    return np.pad(g, ((0, rows - g.shape[0]), (0, width - g.shape[1])), constant_values=-1)


def restart_segments(position_ids: np.ndarray, attention_mask) -> np.ndarray:
    """In place: the text tokens of each segment k >= 2 of a row (attention_mask codes,
    layers.causal_attention) positioned as if the row held that segment alone after the shared
    tokens before it: the last shared token's position + 1, + 1, ... on all three axes. A GRPO
    group's responses thus get the positions each would have after its own copy of the prompt."""
    mask = np.asarray(attention_mask)
    t = np.arange(mask.shape[1])
    for b in np.flatnonzero((mask >= 2).any(1)):
        codes = mask[b]
        seg = codes >= 2
        last_shared = np.maximum.accumulate(np.where(codes == 1, t, -1))
        first = seg & np.concatenate([[True], codes[1:] != codes[:-1]])
        start = np.maximum.accumulate(np.where(first, t, -1))
        orphan = np.flatnonzero(seg & (last_shared < 0))
        if orphan.size:
            raise ValueError(f"row {b}: segment {codes[orphan[0]]} at token {orphan[0]} has no shared tokens before it")
        # Vectorised over the row: rows of a 20000-token prompt and its responses, every micro-batch.
        position_ids[:, b, seg] = position_ids[:, b, last_shared[seg]].max(0) + 1 + t[seg] - start[seg]
    return position_ids


def model_inputs(batch: dict, config: Qwen25VLConfig) -> dict:
    """Host batch from data_pipeline (input_ids, attention_mask, pixel_values, image_grid_thw,
    ...) -> the NumPy arrays `Qwen25VL.forward` takes, vision indices included. attention_mask
    may hold segment codes (layers.causal_attention); their positions: restart_segments."""
    ids = np.asarray(batch["input_ids"])
    mask = np.asarray(batch["attention_mask"])
    grid = batch.get("image_grid_thw")
    position_ids, rope_deltas = get_rope_index(ids, grid, mask, config)
    restart_segments(position_ids, mask)
    out = {
        "input_ids": ids.astype(np.int32),
        "attention_mask": mask.astype(np.int32),
        "position_ids": position_ids,
        "rope_deltas": rope_deltas,
    }
    if batch.get("pixel_values") is not None:
        pv = np.asarray(batch["pixel_values"], np.float32)
        out["pixel_values"] = pv
        out["vision"] = vision_inputs(grid, pv.shape[0], config, min_groups=len(grid))
    return out
