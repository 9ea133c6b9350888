"""Embed a catalogue's photos on a Ray cluster: the same decode, preprocessing and ONNX model
as the local engine, run as Ray Data batches.

The photos are read by the workers themselves (a local folder every node can see, or any
filesystem URI: ``s3://``, ``gs://``, ``hdfs://``, ``file://``); the ONNX model travels to the
workers as bytes, so a node needs lookalike installed but no model cache. Decoding runs in
one pool of actors, inference in another whose actors each hold one ONNX Runtime session;
the driver collects the vectors in catalogue order, so the result equals the local engine's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from lookalike.embed.local import EmbedResult, count_notes, decode_batch
from lookalike.embedders import Embedder, onnx_session
from lookalike.errors import LookalikeError
from lookalike.ingest.decoding import choose_decoder
from lookalike.ingest.preprocess import Preprocess
from lookalike.progress import on_terminal

ENGINES = ("local", "ray")


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LookalikeError("the Ray engine needs Ray: pip install 'lookalike[ray]' "
                             "(or pip install 'ray[data]')") from None
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at ``address`` (``ray://host:10001``, ``auto``, or ``host:6379``),
    or start a local one (all cores) when None. Returns True when this call started or joined
    it (and so should shut it down), False when Ray was already initialised."""
    ray = _ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if address:
        _reachable(address)
    try:
        quiet = {"include_dashboard": False, "log_to_driver": False,
                 "logging_level": logging.WARNING}
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, **quiet)
    except Exception as e:  # noqa: BLE001 (connection errors come in many types)
        where = f"at {address}" if address else "locally"
        raise LookalikeError(f"could not start or reach a Ray cluster {where}: "
                             f"{type(e).__name__}: {e}") from None
    return True


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once, naming the address, when a ``host:port`` cluster does not answer (Ray
    itself keeps retrying for minutes)."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise LookalikeError(f"could not start or reach a Ray cluster at {address}: "
                             f"nothing answers there ({e})") from None


class _Decode:
    """Decoding stage: paths → uint8 pixels, digests, preprocessing notes, or the reason a
    photo could not be read (pixels left zero)."""

    def __init__(self, size: int, max_pixels: int, preprocess: dict[str, Any],
                 decoder: str) -> None:
        self.size, self.max_pixels, self.decoder = size, max_pixels, decoder
        self.pre = Preprocess.from_dict(preprocess)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pos = batch["pos"].tolist()
        d = decode_batch([str(p) for p in batch["path"]], pos, self.size, self.max_pixels,
                         self.pre, self.decoder)
        n = len(pos)
        pixels = np.zeros((n, self.size, self.size, 3), np.uint8)
        at = {p: i for i, p in enumerate(pos)}
        error, digest, notes = [""] * n, [""] * n, ["{}"] * n
        for j, p in enumerate(d.ok):
            i = at[p]
            pixels[i], digest[i], notes[i] = d.pixels[j], d.digests[j] or "", json.dumps(d.notes[j])
        for p, reason in d.bad.items():
            error[at[p]] = reason
        return {"pos": np.asarray(pos, np.int64), "pixels": pixels,
                "error": np.asarray(error, dtype=object), "digest": np.asarray(digest, dtype=object),
                "notes": np.asarray(notes, dtype=object),
                "decode_s": np.full(n, d.seconds / max(1, n))}


class _Embed:
    """Inference stage: one ONNX Runtime session per actor, built from the model's bytes."""

    def __init__(self, model: Any, dim: int, threads: int) -> None:
        if not isinstance(model, bytes):  # the object store's reference to the model bytes
            model = _ray().get(model)
        self.session = onnx_session(model, threads)
        self.dim = dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = np.flatnonzero(batch["error"] == "")
        vectors = np.zeros((len(batch["pos"]), self.dim), np.float32)
        t0 = time.perf_counter()
        if len(good):
            pixels = np.ascontiguousarray(batch["pixels"][good])
            vectors[good] = self.session.run(None, {"pixels": pixels})[0]
        infer = (time.perf_counter() - t0) / max(1, len(batch["pos"]))
        out = {k: v for k, v in batch.items() if k != "pixels"}
        return {**out, "vector": vectors, "infer_s": np.full(len(vectors), infer)}


def _pipeline(ray: Any, embedder: Embedder, sources: Sequence[Any], todo: list[int],
              decode_args: tuple[Any, ...], batch_size: int, actors: int, threads: int,
              cpus: int) -> Any:
    """The Ray Data pipeline: the work list as Arrow blocks (compact at millions of photos, a
    few per CPU), decoded by one actor pool and embedded by another."""
    chunks = np.array_split(np.asarray(todo, np.int64),
                            max(1, min(len(todo) // batch_size, 4 * cpus)))
    ds = ray.data.from_arrow([pa.table({"pos": c, "path": [str(sources[i]) for i in c]})
                              for c in chunks if len(c)] or [pa.table({"pos": [], "path": []})])
    ds = ds.map_batches(_Decode, fn_constructor_args=decode_args, batch_size=batch_size,
                        num_cpus=0.5, compute=ray.data.ActorPoolStrategy(size=actors))
    model = ray.put(embedder.onnx_path.read_bytes())
    return ds.map_batches(_Embed, fn_constructor_args=(model, embedder.dim, threads),
                          batch_size=batch_size, num_cpus=0.5,
                          compute=ray.data.ActorPoolStrategy(size=actors))


def _quiet(ray: Any, progress: bool) -> None:
    """Ray Data's progress bars on a terminal only, and its chatter only with progress."""
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress and on_terminal()
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)


def _in_order(pos_parts: list[np.ndarray], vec_parts: list[np.ndarray], dim: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """The embedded rows and their vectors in catalogue order, as the local engine gives."""
    rows = np.concatenate(pos_parts) if pos_parts else np.zeros(0, np.int64)
    emb = np.concatenate(vec_parts) if vec_parts else np.zeros((0, dim), np.float32)
    order = np.argsort(rows, kind="stable")
    return rows[order], np.ascontiguousarray(emb[order], dtype=np.float32)


def _collect(batches: Any, skipped: dict[int, str], seen: dict[str, Counter]
             ) -> tuple[list[np.ndarray], list[np.ndarray], dict[int, str], float, float]:
    """The embedded batches gathered: positions, vectors, digests, the seconds spent decoding
    and inferring (summed over workers); failures into ``skipped``."""
    pos_parts, vec_parts, digests = [], [], {}
    decode_s = infer_s = 0.0
    for b in batches:
        good = b["error"] == ""
        for p, err in zip(b["pos"][~good].tolist(), b["error"][~good].tolist()):
            skipped[p] = err
        pos_parts.append(b["pos"][good])
        vec_parts.append(b["vector"][good])
        digests.update(zip(b["pos"][good].tolist(), b["digest"][good].tolist()))
        count_notes(seen, [json.loads(n) for n in b["notes"][good]])
        decode_s += float(b["decode_s"].sum())
        infer_s += float(b["infer_s"].sum())
    return pos_parts, vec_parts, digests, decode_s, infer_s


def embed_on_ray(
    embedder: Embedder,
    sources: Sequence[str | os.PathLike | None],
    *,
    address: str | None = None,
    batch_size: int = 32,
    actors: int | None = None,
    max_pixels: int,
    skip: dict[int, str] | None = None,
    preprocess: Preprocess | None = None,
    progress: bool = False,
    decoder: str | None = None,
) -> EmbedResult:
    """Embed photos (local paths or filesystem URIs) on Ray: the same result as
    :func:`lookalike.embed.embed_images`, computed by a pool of ``actors`` ONNX Runtime workers
    per stage (default: one per two CPUs of the cluster). The ``decoder``, unless given, is
    chosen here on the first photos, as the local engine does."""
    ray = _ray()
    pre = preprocess or Preprocess()
    skip = dict(skip or {})
    todo = [i for i in range(len(sources)) if i not in skip and sources[i] is not None]
    skipped = {**skip, **{i: "no image path" for i, s in enumerate(sources)
                          if i not in skip and s is None}}
    seen: dict[str, Counter] = {s: Counter() for s in pre.steps}
    t_start = time.perf_counter()
    size = embedder.spec.input_size
    choice = (choose_decoder((sources[i] for i in todo), size, max_pixels)
              if decoder is None else None)
    owned = connect(address)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        # per stage one worker for two CPUs, each inference session two threads: measured
        # fastest on 2 cores (1 worker: 90 images/s, 2: 72, 4: 56 on 2,000 photos)
        actors = actors or max(1, cpus // 2)
        threads = max(1, cpus // actors)
        _quiet(ray, progress)
        ds = _pipeline(ray, embedder, sources, todo, (size, max_pixels, pre.to_dict(),
                                                      choice.name if choice else decoder),
                       batch_size, actors, threads, cpus)
        pos_parts, vec_parts, digests, decode_s, infer_s = _collect(
            ds.iter_batches(batch_format="numpy", batch_size=None) if todo else [], skipped,
            seen)
    finally:
        if owned:
            ray.shutdown()
    rows, emb = _in_order(pos_parts, vec_parts, embedder.dim)
    total = time.perf_counter() - t_start
    n = len(rows)
    return EmbedResult(
        embeddings=emb, rows=rows.astype(np.int64), skipped=skipped,
        timings={"total_s": total, "decode_s": decode_s, "infer_s": infer_s, "images": n,
                 "images_per_s": n / total if total > 0 else 0.0, "actors": actors},
        preprocess=seen, digests=[digests[int(r)] or None for r in rows], decoder=choice)
