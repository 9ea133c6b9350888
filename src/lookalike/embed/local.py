"""Embed many photos: decode in background threads while ONNX Runtime runs the model.

Returns embeddings aligned with the rows that decoded; every other row is reported with its
reason, so a bad photo can never shift another item's vector.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from PIL import Image

from lookalike.embedders import Embedder
from lookalike.errors import ImageError
from lookalike.ingest.decoding import DecoderChoice, choose_decoder
from lookalike.ingest.images import (
    DEFAULT_MAX_PIXELS,
    ImageSource,
    file_digest,
    load_model_input,
    read_bytes,
)
from lookalike.ingest.preprocess import Outcome, Preprocess
from lookalike.progress import progress_bar


@dataclass
class EmbedResult:
    """``embeddings[i]`` belongs to input position ``rows[i]``; ``skipped`` maps the other
    positions to a reason. ``timings`` holds seconds per stage and ``images_per_s``;
    ``preprocess`` counts, per preprocessing step, the photos by what the step did;
    ``digests[i]`` is the SHA-1 of photo ``rows[i]``'s file (None for in-memory photos);
    ``decoder`` is the decoder used and why."""

    embeddings: np.ndarray
    rows: np.ndarray
    skipped: dict[int, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    preprocess: dict[str, Counter] = field(default_factory=dict)
    digests: list[str | None] = field(default_factory=list)
    decoder: DecoderChoice | None = None


@dataclass
class Decoded:
    """A batch of photos decoded for the model: ``pixels[i]`` is position ``ok[i]``, with its
    file's ``digests[i]`` and the preprocessing ``notes[i]`` (step → what it did)."""

    pixels: np.ndarray
    ok: list[int]
    bad: dict[int, str]
    notes: list[dict[str, str]]
    digests: list[str | None]
    seconds: float


def decode_batch(sources: Sequence[ImageSource], positions: Sequence[int], size: int,
                 max_pixels: int, pre: Preprocess, decoder: str = "pillow") -> Decoded:
    """Read (local path, filesystem URI, bytes or PIL image), decode (with ``decoder``) and
    preprocess photos into uint8 (n, size, size, 3); a photo that fails is reported with its
    reason."""
    t0 = time.perf_counter()
    out = np.empty((len(sources), size, size, 3), np.uint8)
    ok: list[int] = []
    bad: dict[int, str] = {}
    notes: list[dict[str, str]] = []
    digests: list[str | None] = []
    outcome: list[Outcome] = []

    def run(img: Image.Image) -> Image.Image:
        outcome.append(pre.apply(img))
        return outcome[-1].image

    for src, pos in zip(sources, positions):
        outcome.clear()
        try:
            digest = None
            if isinstance(src, (str, os.PathLike)):
                src = read_bytes(src)
                digest = file_digest(src)
            out[len(ok)] = load_model_input(src, size, max_pixels=max_pixels,
                                            preprocess=run if pre.steps else None,
                                            decoder=decoder, fit=pre.fit)
        except ImageError as e:
            bad[pos] = str(e)
            continue
        except Exception as e:  # noqa: BLE001 (a decoder bug must not stop the build)
            bad[pos] = f"could not decode: {type(e).__name__}: {e}"
            continue
        ok.append(pos)
        digests.append(digest)
        notes.append(dict(outcome[0].notes) if outcome else {})
    return Decoded(out[: len(ok)], ok, bad, notes, digests, time.perf_counter() - t0)


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
    decoder: str | None = None,
) -> EmbedResult:
    """Embed ``sources`` (paths, bytes or PIL images), each run through ``preprocess`` first.
    Positions listed in ``skip`` are not read and are reported with the given reason.
    ``decoder`` (``pillow`` or ``opencv``) decodes the photos; by default the faster of the
    two on the first photos, provided their pixels match (:mod:`lookalike.ingest.decoding`)."""
    pre = preprocess or Preprocess()
    seen: dict[str, Counter] = {s: Counter() for s in pre.steps}
    skip = dict(skip or {})
    todo = [i for i in range(len(sources)) if i not in skip]
    workers = workers or min(4, os.cpu_count() or 1)
    size = embedder.spec.input_size
    t_start = time.perf_counter()
    choice = (choose_decoder((sources[i] for i in todo), size, max_pixels)
              if decoder is None else None)
    decoder = choice.name if choice else decoder
    got = _Collected(skipped=dict(skip))
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    bar = progress_bar(len(sources), unit="img", desc=embedder.name, show=progress)
    bar.update(len(skip))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        decode = partial(decode_batch, size=size, max_pixels=max_pixels, pre=pre,
                         decoder=decoder)
        for d, waited in _decoded_ahead(pool, decode, sources, batches, workers + 2):
            got.wait_s += waited
            count_notes(seen, d.notes)
            got.take(d, embedder)
            bar.update(len(d.ok) + len(d.bad))
            if d.bad:
                bar.set_postfix(skipped=len(got.skipped))
    bar.close()
    total = time.perf_counter() - t_start
    emb = np.concatenate(got.chunks) if got.chunks else np.zeros((0, embedder.dim), np.float32)
    n = len(got.rows)
    return EmbedResult(
        embeddings=emb, rows=np.asarray(got.rows, dtype=np.int64), skipped=got.skipped,
        timings={"total_s": total, "decode_s": got.decode_s, "infer_s": got.infer_s,
                 "wait_for_decode_s": got.wait_s, "images": n,
                 "images_per_s": n / total if total > 0 else 0.0},
        preprocess=seen, digests=got.digests, decoder=choice)


@dataclass
class _Collected:
    """What the embedding loop has gathered so far, and where its time went."""

    skipped: dict[int, str]
    chunks: list[np.ndarray] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    digests: list[str | None] = field(default_factory=list)
    decode_s: float = 0.0
    infer_s: float = 0.0
    wait_s: float = 0.0

    def take(self, d: Any, embedder: Embedder) -> None:
        """One decoded batch: its photos embedded, its failures recorded."""
        self.decode_s += d.seconds
        self.skipped.update(d.bad)
        t0 = time.perf_counter()
        if d.ok:
            self.chunks.append(embedder(d.pixels))
            self.rows.extend(d.ok)
            self.digests.extend(d.digests)
        self.infer_s += time.perf_counter() - t0


def _decoded_ahead(pool: ThreadPoolExecutor, decode: Callable[..., Any],
                   sources: Sequence[ImageSource], batches: list[list[int]], ahead: int
                   ) -> Iterator[tuple[Any, float]]:
    """Each batch decoded by ``pool``, in order, ``ahead`` batches decoding while the caller
    runs the model; with the seconds the caller waited for it."""
    pending: deque = deque()
    it = iter(batches)

    def submit() -> None:
        b = next(it, None)
        if b is not None:
            pending.append(pool.submit(decode, [sources[i] for i in b], b))

    for _ in range(ahead):
        submit()
    while pending:
        t0 = time.perf_counter()
        d = pending.popleft().result()
        waited = time.perf_counter() - t0
        submit()
        yield d, waited


def count_notes(seen: dict[str, Counter], notes: Sequence[dict[str, str]]) -> None:
    """Add photos' preprocessing notes to the per-step counts."""
    for n in notes:
        for step, note in n.items():
            seen[step][note] += 1


def pool_views(embeddings: np.ndarray) -> np.ndarray:
    """One photo's embedding from those of its views (n, d): the first when alone, else their
    normalised mean."""
    if len(embeddings) == 1:
        return embeddings[0]
    mean = embeddings.mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
