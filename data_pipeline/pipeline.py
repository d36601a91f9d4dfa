"""Grain pipeline: record files -> shuffled, sharded, preprocessed, bucket-padded host batches.

Order: source (JSONL records in memory, or ArrayRecord shards streamed) -> global shuffle
(seed, reshuffled each epoch) -> repeat -> [worker processes: parse, image preprocessing,
tokenization] -> batch and pad in the main process.

Several processes (docs/multihost.md): batch_size is the global batch, and every process builds
the same global batches (the same sequence for any process count, so a run's losses do not
depend on it); bucket shapes are chosen from the whole global batch, so the processes agree on
every shape with no exchange. Each process puts only its own devices' rows on the devices
(progress_jax/train/loop.to_device). The cost: every process reads and preprocesses every row.

A host batch holds int32 `input_ids`, `attention_mask`, `loss_mask` [B, L]; float32
`pixel_values` [P, 1176] (images of all rows, row order then prompt order, zero rows up to
the patch bucket); int32 `image_grid_thw` [M, 3] (zero rows up to the image bucket); and
two lists kept out of the device arrays: `keys` (sample keys) and `records`, None for the
rows that pad an incomplete last batch. `device_arrays(batch)` drops the lists.
"""
from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Sequence

import grain
import numpy as np
from PIL import Image

from data_pipeline.array_record import SUFFIX, decode_entry
from data_pipeline.image_processor import preprocess
from data_pipeline.prompts import check_layout, record_images, target_answer, tokenize_chat, tokenize_record
from data_pipeline.records import ChatRecord, file_format, load_chat_records, load_records

logger = logging.getLogger(__name__)

ARRAY_KEYS = ("input_ids", "attention_mask", "loss_mask", "pixel_values", "image_grid_thw")
PATCH_DIM = 1176  # 3 channels x 2 frames x 14 x 14


def device_arrays(batch: dict) -> dict:
    """The numpy fields of a host batch (what goes to the device)."""
    return {k: batch[k] for k in ARRAY_KEYS}


def _load_jsonl(path: str, image_root: str | None, strict: bool) -> list:
    if file_format(path) == "chat":
        return load_chat_records(path, image_root, strict)
    return load_records(path, image_root, strict)


class _Prepare:
    """One record (or ArrayRecord entry) -> tokenized sample with its image patches (runs in workers)."""

    def __init__(self, tokenizer, image_root, mode, with_answers, min_pixels, max_pixels, max_length, layout, stage,
                 blank_observation=False):
        self.tokenizer, self.image_root, self.mode = tokenizer, image_root, mode
        self.with_answers, self.min_pixels, self.max_pixels = with_answers, min_pixels, max_pixels
        self.max_length, self.layout, self.stage = max_length, layout, stage
        self.blank_observation = blank_observation

    def __call__(self, item) -> dict:
        record = decode_entry(item, self.image_root) if isinstance(item, bytes) else item
        if isinstance(record, ChatRecord):
            images = list(record.images)
        else:
            if self.image_root is None:
                raise ValueError("image_root is required to read the images of benchmark records")
            images = record_images(record, self.image_root)
            if self.blank_observation:  # the ablation: the observation (the last image) flat grey, same size
                with Image.open(images[-1]) as observation:
                    images[-1] = Image.new("RGB", observation.size, (128, 128, 128))
        pixel_values, grids = (preprocess(images, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
                               if images else (np.zeros((0, PATCH_DIM), np.float32), np.zeros((0, 3), np.int64)))
        if isinstance(record, ChatRecord):
            tokens = tokenize_chat(self.tokenizer, record, grids, self.max_length, with_answer=self.with_answers)
        else:
            answer = None
            if self.with_answers:
                answer = target_answer(record, self.mode)
                if answer is None:
                    raise ValueError(f"{record.source}:{record.line}: think-mode training needs a 'response' "
                                     f"(four-block answer) on every record; id {record.id} has none")
            tokens = tokenize_record(self.tokenizer, record, grids, self.mode, answer, self.max_length,
                                     layout=self.layout, stage=self.stage)
        return {"input_ids": tokens.input_ids, "loss_mask": tokens.loss_mask,
                "pixel_values": pixel_values.astype(np.float32, copy=False),
                "image_grid_thw": grids.astype(np.int32), "key": record.key, "record": record}


_BUCKET_HINTS = {"tokens": "length_buckets", "patches": "patch_buckets (or lower max_pixels / batch_size)",
                 "images": "image_buckets (or lower batch_size)"}
_BUCKET_HINTS["patches of one batch shard"] = _BUCKET_HINTS["patches"]


def _bucket(value: int, buckets: Sequence[int], what: str, keys) -> int:
    i = bisect.bisect_left(buckets, value)
    if i == len(buckets):
        raise ValueError(f"batch needs {value} {what}, more than the largest bucket {buckets[-1]}; "
                         f"raise {_BUCKET_HINTS[what]} (samples: {keys})")
    return buckets[i]


class _Collate:
    """Pads a list of samples to the bucket shapes (and to batch_size rows for a last partial batch).

    batch_shards: the groups of rows the trainer splits a batch into over its devices (data x fsdp
    of the whole mesh: every process collates the whole global batch). The patch bucket is chosen per shard: P = batch_shards x P_s, with P_s the
    smallest patch bucket / batch_shards (rounded up to a multiple of 4) that holds every shard's
    patches, so that the trainer lays the patches out as [batch_shards, P_s] (each device encodes
    its own rows' images). A shard may also take a whole bucket (uneven shards), so a batch that fits
    the buckets unsharded fits them sharded. batch_shards = 1: the bucket of all the batch's patches."""

    def __init__(self, batch_size, length_buckets, patch_buckets, image_buckets, pad_id, batch_shards=1):
        if batch_size % batch_shards:
            raise ValueError(f"batch_size {batch_size} does not split into {batch_shards} batch shards")
        self.batch_size, self.pad_id, self.batch_shards = batch_size, pad_id, batch_shards
        self.length_buckets, self.patch_buckets, self.image_buckets = length_buckets, patch_buckets, image_buckets

    def _patch_bucket(self, samples, keys) -> int:
        S = self.batch_shards
        per_row = [len(s["pixel_values"]) for s in samples]
        per_row += [0] * (self.batch_size - len(per_row))
        need = max(sum(per_row[i:i + self.batch_size // S]) for i in range(0, self.batch_size, self.batch_size // S))
        # Per shard: each bucket / S, and (for a shard holding most of the images) each bucket
        # itself, never more patches per device than a whole batch's bucket.
        per_shard = sorted({-(-b // (4 * S)) * 4 for b in self.patch_buckets} | set(self.patch_buckets))
        return S * _bucket(need, per_shard, "patches" if S == 1 else "patches of one batch shard", keys)

    def __call__(self, samples: Sequence[dict]) -> dict:
        keys = [s["key"] for s in samples]
        B = self.batch_size
        L = _bucket(max(len(s["input_ids"]) for s in samples), self.length_buckets, "tokens", keys)
        P = self._patch_bucket(samples, keys)
        M = _bucket(sum(len(s["image_grid_thw"]) for s in samples), self.image_buckets, "images", keys)
        input_ids = np.full((B, L), self.pad_id, np.int32)
        attention_mask = np.zeros((B, L), np.int32)
        loss_mask = np.zeros((B, L), np.int32)
        pixel_values = np.zeros((P, PATCH_DIM), np.float32)
        grids = np.zeros((M, 3), np.int32)
        p = m = 0
        for b, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[b, :n], attention_mask[b, :n], loss_mask[b, :n] = s["input_ids"], 1, s["loss_mask"]
            np_, nm = len(s["pixel_values"]), len(s["image_grid_thw"])
            pixel_values[p:p + np_], grids[m:m + nm] = s["pixel_values"], s["image_grid_thw"]
            p, m = p + np_, m + nm
        pad_rows = [None] * (B - len(samples))
        return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
                "pixel_values": pixel_values, "image_grid_thw": grids,
                "keys": keys + pad_rows, "records": [s["record"] for s in samples] + pad_rows}


def _ensure_flags_parsed() -> None:
    """Grain's worker processes read absl flags; outside an absl app, take their defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _check_buckets(name: str, buckets: Sequence[int], multiple: int = 1) -> tuple[int, ...]:
    out = tuple(sorted(int(b) for b in buckets))
    if not out or out[0] <= 0 or any(b % multiple for b in out):
        raise ValueError(f"{name} must be a non-empty list of positive integers"
                         + (f" divisible by {multiple}" if multiple > 1 else "") + f", got {list(buckets)}")
    return out


def _source(files: Sequence[str], image_root: str | None, strict: bool, records: Sequence = ()) -> grain.MapDataset:
    parts = [grain.MapDataset.source(list(records))] if records else []
    jsonl = [os.fspath(f) for f in files if not os.fspath(f).endswith(SUFFIX)]
    shards = [os.fspath(f) for f in files if os.fspath(f).endswith(SUFFIX)]
    for f in jsonl + shards:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"data file not found: {f}")
    if jsonl:
        parts.append(grain.MapDataset.source([r for f in jsonl for r in _load_jsonl(f, image_root, strict)]))
    if shards:
        parts.append(grain.MapDataset.source(grain.sources.ArrayRecordDataSource(shards)))
    if not parts:
        raise ValueError("no data files or records given")
    ds = parts[0] if len(parts) == 1 else grain.MapDataset.concatenate(parts)
    if len(ds) == 0:
        raise ValueError(f"no records in {list(files)}")
    return ds


def make_dataset(
    files: Sequence[str],
    image_root: str | None,
    tokenizer,
    *,
    mode: str = "think",
    with_answers: bool = True,
    batch_size: int = 8,
    length_buckets: Sequence[int] = (1024, 2048, 4096),
    patch_buckets: Sequence[int] = (4096, 8192, 16384),
    image_buckets: Sequence[int] = (16, 32, 64),
    min_pixels: int = 3136,
    max_pixels: int = 12845056,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = 1,
    drop_remainder: bool = True,
    worker_count: int = 0,
    read_threads: int = 4,
    strict: bool = False,
    records: Sequence = (),
    layout: str = "interleaved",
    stage: str | None = None,
    batch_shards: int = 1,
    blank_observation: bool = False,
) -> grain.IterDataset:
    """Host batches for training (with_answers=True: targets in the loss mask) or generation (prompts only).

    files: .jsonl record or chat files and/or .array_record shards; image_root: IMAGE_ROOT of
    the benchmark records (chat image paths are resolved against it too when given).
    Sequences longer than the largest length bucket are truncated per data_pipeline.prompts.
    worker_count: processes for parse/preprocess/tokenize (0: in this process); read_threads:
    threads per process doing the same. num_epochs=None repeats forever. batch_size is the global
    batch (the same batches in every process; see the module doc). With drop_remainder=True the
    samples after the last full batch of a finite run are dropped and logged; with False the last
    batch is padded with empty rows (keys None). `iter(dataset)` gives an iterator with
    get_state()/set_state() for checkpoints, in global-batch terms (a run resumes on another
    process count). records: already loaded Record/ChatRecord objects,
    used before the files' (their images are not checked here). strict=True also raises on the
    lines the official loaders skip (docs/formats.md).
    layout: prompt layout of benchmark/RL records, "interleaved" or "official" (docs/prompts.md);
    stage: which official prompt, "eval" | "sft" | "rl" (None: "sft" with answers, else "eval").
    SFT chat files keep the text they carry.
    batch_shards: the row groups the trainer splits each batch into over the mesh's devices
    (sharding.batch_shards); patch buckets are then chosen per group (see _Collate).
    blank_observation: benchmark records' observation image replaced by flat grey of its size (an
    ablation: what a model scores without looking at the observation).
    """
    stage = stage or ("sft" if with_answers else "eval")
    check_layout(layout, stage, mode)
    length_buckets = _check_buckets("length_buckets", length_buckets)
    patch_buckets = _check_buckets("patch_buckets", patch_buckets, multiple=4)
    image_buckets = _check_buckets("image_buckets", image_buckets)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    ds = _source(files, image_root, strict, records)
    if shuffle:
        ds = ds.shuffle(seed=seed)  # grain reseeds each epoch with seed + epoch
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)  # None: forever
    if drop_remainder and num_epochs is not None:
        usable = len(ds) - len(ds) % batch_size
        if usable == 0:
            raise ValueError(f"{len(ds)} samples are fewer than one batch of {batch_size}")
        if usable < len(ds):
            logger.warning("dropping the last %d of %d samples (not a full batch of %d)",
                           len(ds) - usable, len(ds), batch_size)
            ds = ds[:usable]
    ds = ds.map(_Prepare(tokenizer, image_root, mode, with_answers, min_pixels, max_pixels, length_buckets[-1],
                         layout, stage, blank_observation))
    # Threads overlap image decoding (PIL and NumPy release the GIL); a small read-ahead bounds memory,
    # since one sample carries megabytes of patches (grain's default buffer is 500 samples).
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch_size))
    if worker_count > 0:
        _ensure_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it.batch(batch_size, drop_remainder=drop_remainder,
                    batch_fn=_Collate(batch_size, length_buckets, patch_buckets, image_buckets, tokenizer.pad_id,
                                      batch_shards))
