"""Embed many photos: decode in background threads while ONNX Runtime runs the model.

Returns embeddings aligned with the rows that decoded; every other row is reported with its
reason, so a bad photo can never shift another item's vector.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from .embedders import Embedder
from .errors import ImageError
from .images import DEFAULT_MAX_PIXELS, ImageSource, load_model_input
from .preprocess import Outcome, Preprocess


@dataclass
class EmbedResult:
    """``embeddings[i]`` belongs to input position ``rows[i]``; ``skipped`` maps the other
    positions to a reason. ``timings`` holds seconds per stage and ``images_per_s``;
    ``preprocess`` counts, per preprocessing step, the photos by what the step did."""

    embeddings: np.ndarray
    rows: np.ndarray
    skipped: dict[int, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    preprocess: dict[str, Counter] = field(default_factory=dict)


def _decode_batch(sources: Sequence[ImageSource], positions: Sequence[int], size: int,
                  max_pixels: int, pre: Preprocess
                  ) -> tuple[np.ndarray, list[int], dict[int, str], list[Outcome], float]:
    t0 = time.perf_counter()
    out = np.empty((len(sources), size, size, 3), np.uint8)
    ok: list[int] = []
    bad: dict[int, str] = {}
    outcomes: list[Outcome] = []

    def run(img: Image.Image) -> Image.Image:
        outcomes.append(pre.apply(img))
        return outcomes[-1].image

    for src, pos in zip(sources, positions):
        try:
            out[len(ok)] = load_model_input(src, size, max_pixels=max_pixels,
                                            preprocess=run if pre else None)
            ok.append(pos)
        except ImageError as e:
            bad[pos] = str(e)
        except Exception as e:  # noqa: BLE001 (a decoder bug must not stop the build)
            bad[pos] = f"could not decode: {type(e).__name__}: {e}"
    return out[: len(ok)], ok, bad, outcomes, time.perf_counter() - t0


def embed_images(
    embedder: Embedder,
    sources: Sequence[ImageSource],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    skip: dict[int, str] | None = None,
    preprocess: Preprocess | None = None,
) -> EmbedResult:
    """Embed ``sources`` (paths, bytes or PIL images), each run through ``preprocess`` first.
    Positions listed in ``skip`` are not read and are reported with the given reason."""
    pre = preprocess or Preprocess()
    seen: dict[str, Counter] = {s: Counter() for s in pre.steps}
    skip = dict(skip or {})
    todo = [i for i in range(len(sources)) if i not in skip]
    workers = workers or min(4, os.cpu_count() or 1)
    size = embedder.spec.input_size
    t_start = time.perf_counter()
    decode_s = infer_s = wait_s = 0.0
    chunks: list[np.ndarray] = []
    rows: list[int] = []
    skipped = dict(skip)
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = tqdm(total=len(sources), unit="img", disable=not progress, desc=embedder.name)
    bar.update(len(skip))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        it = iter(batches)

        def submit() -> None:
            b = next(it, None)
            if b is not None:
                pending.append(pool.submit(_decode_batch, [sources[i] for i in b], b, size,
                                           max_pixels, pre))

        for _ in range(workers + 2):  # decode runs ahead of inference
            submit()
        while pending:
            t0 = time.perf_counter()
            pixels, ok, bad, outcomes, dt = pending.popleft().result()
            wait_s += time.perf_counter() - t0
            for o in outcomes:
                for step, note in o.notes.items():
                    seen[step][note] += 1
            submit()
            decode_s += dt
            skipped.update(bad)
            t0 = time.perf_counter()
            if ok:
                chunks.append(embedder(pixels))
                rows.extend(ok)
            infer_s += time.perf_counter() - t0
            bar.update(len(ok) + len(bad))
            if bad:
                bar.set_postfix(skipped=len(skipped))
    bar.close()
    total = time.perf_counter() - t_start
    emb = np.concatenate(chunks) if chunks else np.zeros((0, embedder.dim), np.float32)
    n = len(rows)
    return EmbedResult(
        embeddings=emb, rows=np.asarray(rows, dtype=np.int64), skipped=skipped,
        timings={"total_s": total, "decode_s": decode_s, "infer_s": infer_s,
                 "wait_for_decode_s": wait_s, "images": n,
                 "images_per_s": n / total if total > 0 else 0.0},
        preprocess=seen)
