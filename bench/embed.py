"""Embedding throughput, side by side in one run, on the sample catalogue.

  end-to-end      lookalike's pipeline: decode in background threads + ONNX Runtime
  pure inference  the same ONNX model on pre-decoded uint8 tensors (no decoding at all)
  eager PyTorch   the same network in eager torch on the same pre-decoded tensors
  preprocessing   end-to-end again with garment-focus steps (--preprocess, repeatable;
                  default: lookalike's default steps and all three), each as a share of
                  end-to-end without them (issue 6: at least 0.70)
  int8            the model statically quantized (calibrated on 256 catalogue photos, as
                  `lookalike build --precision int8` does): model-only and end-to-end, with
                  their ratios to fp32 and the cosine of each photo's two vectors

Usage: .venv/bin/python bench/embed.py [--model efficientnet-lite0] [--n 0] [--eager-n 1024]
       [--preprocess face,crop,background ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lookalike import create_embedder, embed_images, read_catalog
from lookalike.embedders import build_torch_model
from lookalike.images import load_model_input
from lookalike.preprocess import DEFAULT_PREPROCESS, STEPS, Preprocess

DATA = Path(os.environ.get("LOOKALIKE_DATASETS", "../shared/datasets")) / "myntra-9k"


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="efficientnet-lite0")
    ap.add_argument("--n", type=int, default=0, help="photos to embed (0 = the whole catalogue)")
    ap.add_argument("--eager-n", type=int, default=1024, help="photos for eager PyTorch (slow)")
    ap.add_argument("--batch-size", type=int, default=32)
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

    embed_images(emb, paths[:256], batch_size=bs)  # warm-up
    e2e = embed_images(emb, paths, batch_size=bs)
    e2e_rate = rate(len(e2e.rows), e2e.timings["total_s"])

    pixels = np.stack([load_model_input(p, size) for p in paths])
    t0 = time.perf_counter()
    out = np.concatenate([emb(pixels[i:i + bs]) for i in range(0, n, bs)])
    pure_rate = rate(n, time.perf_counter() - t0)
    assert np.allclose(out, e2e.embeddings, atol=1e-5), "pipeline and direct inference disagree"

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

    from lookalike.quantize import quantize

    calib = [paths[i] for i in np.random.default_rng(0).permutation(n)[:256]]
    int8 = quantize(emb, calib)
    int8(pixels[:bs])  # warm-up
    t0 = time.perf_counter()
    out8 = np.concatenate([int8(pixels[i:i + bs]) for i in range(0, n, bs)])
    pure8_rate = rate(n, time.perf_counter() - t0)
    e2e8 = embed_images(int8, paths, batch_size=bs)
    e2e8_rate = rate(len(e2e8.rows), e2e8.timings["total_s"])
    cos = np.sum(out * out8, axis=1) / np.linalg.norm(out8, axis=1)

    pre_rows = []
    for pre in choices:
        r = embed_images(emb, paths, batch_size=bs, preprocess=pre)
        pre_rows.append((f"end-to-end, preprocess {pre}", rate(len(r.rows), r.timings["total_s"]),
                         r.timings))

    rows = [("end-to-end (decode + ONNX Runtime)", e2e_rate),
            ("pure inference (ONNX Runtime, pre-decoded)", pure_rate),
            ("eager PyTorch (pre-decoded)", eager_rate),
            ("int8 end-to-end", e2e8_rate), ("int8 pure inference", pure8_rate)] + \
        [r[:2] for r in pre_rows]
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
          f"inference {pure8_rate / pure_rate:.2f}x; cosine to fp32 mean {cos.mean():.4f}, "
          f"min {cos.min():.4f} (target mean >= 0.99)")
    for name, r, t in pre_rows:
        print(f"{name}: {r / e2e_rate:.2f} of end-to-end (target >= 0.70); decoding and "
              f"preprocessing {t['decode_s']:.1f} s in background threads, waiting for them "
              f"{t['wait_for_decode_s']:.1f} s, inference {t['infer_s']:.1f} s")


if __name__ == "__main__":
    main()
