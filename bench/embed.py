"""Embedding throughput, side by side in one run, on the sample catalogue.

  end-to-end      lookalike's pipeline: decode in background threads + ONNX Runtime
  pure inference  the same ONNX model on pre-decoded uint8 tensors (no decoding at all)
  eager PyTorch   the same network in eager torch on the same pre-decoded tensors
  preprocessing   end-to-end again with garment-focus steps (--preprocess, repeatable;
                  default: lookalike's default steps and all three), each as a share of
                  end-to-end without them (issue 6: at least 0.70)
  int8            the model statically quantized (calibrated on 256 catalogue photos, as
                  `lookalike build --precision int8` does): model-only and end-to-end, with
                  their ratios to fp32 and the cosine of each photo's two vectors; fp32 and
                  int8 end-to-end alternate for --rounds rounds, each one's best counts
  decoders        Pillow and OpenCV: decoding alone (ms per photo, one thread; the largest
                  pixel difference over every photo) and int8 end-to-end with each

Usage: .venv/bin/python bench/embed.py [--model efficientnet-lite0] [--n 0] [--eager-n 1024]
       [--rounds 2] [--preprocess face,crop,background ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lookalike import read_catalog
from lookalike.embed.local import embed_images
from lookalike.embedders import build_torch_model, create_embedder
from lookalike.ingest.images import DECODERS, load_model_input, read_bytes
from lookalike.ingest.preprocess import DEFAULT_PREPROCESS, STEPS, Preprocess

DATA = Path(os.environ.get("LOOKALIKE_DATASETS", "../shared/datasets")) / "myntra-9k"


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def decoders(paths: list, size: int) -> tuple[dict[str, float], int]:
    """Decoding alone, one thread: ms per photo for Pillow and OpenCV over all ``paths``, and
    the largest pixel difference between them (levels)."""
    data = [read_bytes(p) for p in paths]
    ms, out = {}, {}
    for name in DECODERS:
        t0 = time.perf_counter()
        out[name] = [load_model_input(d, size, decoder=name) for d in data]
        ms[name] = (time.perf_counter() - t0) / len(data) * 1e3
    diff = max(int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())
               for a, b in zip(out["pillow"], out["opencv"]))
    return ms, diff


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0",
                    help="embedder name, or a trained model folder (then use --eager-n 0)")
    ap.add_argument("--n", type=int, default=0, help="photos to embed (0 = the whole catalogue)")
    ap.add_argument("--eager-n", type=int, default=1024,
                    help="photos for eager PyTorch (slow; 0: skip)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating end-to-end rounds of fp32 and int8 (each path's best counts)")
    ap.add_argument("--preprocess", action="append", metavar="STEPS",
                    help="garment-focus steps to time end-to-end (repeatable)")
    args = ap.parse_args()
    choices = [Preprocess.parse(p) for p in args.preprocess or
               [str(DEFAULT_PREPROCESS), ",".join(STEPS)]]
    choices = [c for i, c in enumerate(choices) if c and c not in choices[:i]]

    cat = read_catalog(DATA / "catalog.csv")
    n = args.n or len(cat)
    paths = [cat.image_file(i) for i in range(n)]
    emb = create_embedder(args.model)
    size, bs = emb.spec.input_size, args.batch_size
    print(f"{args.model} on {n} photos of {DATA}, batch {bs}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}")

    from lookalike.embedders.quantize import quantize

    calib = [paths[i] for i in np.random.default_rng(0).permutation(n)[:256]]
    int8 = quantize(emb, calib)
    embed_images(emb, paths[:256], batch_size=bs)  # warm-up
    embed_images(int8, paths[:256], batch_size=bs)
    best: dict[str, float] = {"fp32": 0.0, "int8": 0.0}
    results = {}
    for r in range(args.rounds):  # alternating: a noisy machine slows both alike
        for name, model in (("fp32", emb), ("int8", int8)):
            results[name] = embed_images(model, paths, batch_size=bs)
            got = rate(len(results[name].rows), results[name].timings["total_s"])
            print(f"round {r + 1}: {name} end-to-end {got:.1f} images/s")
            best[name] = max(best[name], got)
    e2e, e2e_rate, e2e8_rate = results["fp32"], best["fp32"], best["int8"]
    print(results["int8"].decoder)

    pixels = np.stack([load_model_input(p, size) for p in paths])
    pure = {}
    for name, model in (("fp32", emb), ("int8", int8)):
        t0 = time.perf_counter()
        out = np.concatenate([model(pixels[i:i + bs]) for i in range(0, n, bs)])
        pure[name] = (rate(n, time.perf_counter() - t0), out)
    (pure_rate, out), (pure8_rate, out8) = pure["fp32"], pure["int8"]
    assert np.allclose(out, e2e.embeddings, atol=1e-5), "pipeline and direct inference disagree"
    cos = np.sum(out * out8, axis=1) / np.linalg.norm(out8, axis=1)

    eager_rate = float("nan")
    if args.eager_n:
        torch.set_num_threads(os.cpu_count() or 1)
        model = build_torch_model(args.model)
        m = min(args.eager_n, n)
        x = torch.from_numpy(pixels[:m])
        with torch.inference_mode():
            model(x[:bs])  # warm-up
            t0 = time.perf_counter()
            for i in range(0, m, bs):
                model(x[i:i + bs])
            eager_rate = rate(m, time.perf_counter() - t0)

    dec_ms, dec_diff = decoders(paths, size)
    dec_rows = []
    for name in DECODERS:
        r = embed_images(int8, paths, batch_size=bs, decoder=name)
        dec_rows.append((f"int8 end-to-end, {name} decoder", rate(len(r.rows), r.timings["total_s"])))

    pre_rows = []
    for pre in choices:
        r = embed_images(emb, paths, batch_size=bs, preprocess=pre)
        pre_rows.append((f"end-to-end, preprocess {pre}", rate(len(r.rows), r.timings["total_s"]),
                         r.timings))

    rows = [("end-to-end (decode + ONNX Runtime)", e2e_rate),
            ("pure inference (ONNX Runtime, pre-decoded)", pure_rate),
            ("eager PyTorch (pre-decoded)", eager_rate),
            ("int8 end-to-end", e2e8_rate), ("int8 pure inference", pure8_rate),
            *dec_rows] + [r[:2] for r in pre_rows]
    print(f"\n| {'path':50} | images/s | / end-to-end |")
    print(f"|{'-' * 52}|----------|--------------|")
    for name, r in rows:
        print(f"| {name:50} | {r:8.1f} | {r / e2e_rate:12.2f} |")
    t = e2e.timings
    print(f"\nend-to-end stages: total {t['total_s']:.1f} s, inference {t['infer_s']:.1f} s, "
          f"decoding {t['decode_s']:.1f} s (background), waiting for decoding "
          f"{t['wait_for_decode_s']:.1f} s")
    print(f"end-to-end / pure inference = {e2e_rate / pure_rate:.2f}  (target >= 0.80)")
    print(f"end-to-end / eager PyTorch  = {e2e_rate / eager_rate:.2f}  (target >= 4)")
    print(f"int8 / fp32: end-to-end {e2e8_rate / e2e_rate:.2f}x (target >= 1.9), pure "
          f"inference {pure8_rate / pure_rate:.2f}x; int8 end-to-end {e2e8_rate:.1f} images/s "
          f"(target >= 400); cosine to fp32 mean {cos.mean():.4f}, min {cos.min():.4f} "
          f"(target mean >= 0.99)")
    print(f"decoding alone, one thread, all {n} photos: Pillow {dec_ms['pillow']:.3f} ms/photo, "
          f"OpenCV {dec_ms['opencv']:.3f} ({dec_ms['pillow'] / dec_ms['opencv']:.2f}x); "
          f"largest pixel difference {dec_diff} level(s) (target <= 1)")
    for name, r, t in pre_rows:
        print(f"{name}: {r / e2e_rate:.2f} of end-to-end (target >= 0.70); decoding and "
              f"preprocessing {t['decode_s']:.1f} s in background threads, waiting for them "
              f"{t['wait_for_decode_s']:.1f} s, inference {t['infer_s']:.1f} s")


if __name__ == "__main__":
    main()
