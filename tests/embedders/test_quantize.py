"""int8 models: quantization end to end, the guard against a broken calibration, the
uint8-input graph normalising exactly like the float path, and the normalisation folded into
the first convolutions so the int8 graph reads the raw pixels."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lookalike import Index, LookalikeError, build_index, read_catalog
from lookalike.build import Int8
from lookalike.cli import cli
from lookalike.embedders import (
    build_torch_model,
    create_embedder,
    export_module,
    export_onnx,
    get_spec,
    normalise_pixels,
    onnx_session,
)
from lookalike.embedders.fold import fold_normalisation
from lookalike.training.network import DeepRanking

from ..conftest import MYNTRA

MODEL = "efficientnet-lite0"  # built for int8 (ReLU6, no squeeze-excite): quantizes in seconds


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """80 real catalogue photos (synthetic flat shapes quantize atypically badly)."""
    if not MYNTRA.is_dir():
        pytest.skip(f"sample data not found at {MYNTRA}")
    path = tmp_path_factory.mktemp("q") / "catalog.csv"
    pd.read_csv(MYNTRA / "catalog.csv").iloc[::120].head(80).to_csv(path, index=False)
    return path


@pytest.mark.model
def test_int8_build_end_to_end(photos: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["build", str(photos), "--images", str(MYNTRA), "-q", "--model", MODEL]
    fp32 = runner.invoke(cli, [*base, "-o", str(tmp_path / "fp32")])
    assert fp32.exit_code == 0, fp32.output
    q = runner.invoke(cli, ["quantize", str(photos), "--images", str(MYNTRA), "--model", MODEL,
                            "--calibration-size", "48"])
    assert q.exit_code == 0, q.output
    assert "calibrated on 48 photos; against fp32 on 32: mean cosine" in q.output
    cached = Path(q.output.split("int8 model of efficientnet-lite0: ")[1].split()[0])
    made = cached.stat().st_mtime_ns
    r = runner.invoke(cli, [*base, "-o", str(tmp_path / "int8"), "--precision", "int8",
                            "--calibration-size", "48"])
    assert r.exit_code == 0, r.output
    assert cached.stat().st_mtime_ns == made  # the build reused the quantized model
    assert (tmp_path / "int8" / "model-int8.onnx").read_bytes() == cached.read_bytes()
    assert "int8 model calibrated on 48 photos; against fp32 on 32: mean cosine" in r.output
    info = runner.invoke(cli, ["info", str(tmp_path / "int8")])
    assert "int8 model calibrated on 48 photos; against fp32 on 32: mean cosine" in info.output
    assert "photos decoded with " in info.output
    m = json.loads((tmp_path / "int8" / "manifest.json").read_text())
    assert m["embedder"]["precision"] == "int8" and m["precision"]["calibration"] == {
        "photos": 48, "seed": 0, "source": "catalogue"}
    assert m["precision"]["check"]["mean_cosine"] >= 0.99 and "warning" not in m["precision"]
    graph = onnx.load(tmp_path / "int8" / "model-int8.onnx").graph
    assert "Cast" not in {n.op_type for n in graph.node}  # normalisation folded in
    assert all(n.op_type in ("Transpose", "DequantizeLinear")
               for n in graph.node if graph.input[0].name in n.input)  # raw pixels read
    a, b = Index.open(tmp_path / "fp32"), Index.open(tmp_path / "int8")
    cos = np.sum(np.asarray(a.embeddings) * np.asarray(b.embeddings), axis=1)
    assert cos.mean() >= 0.99  # the same photos, the two models: close vectors
    assert b.embedder.spec.precision == "int8"  # queries go through the folder's int8 model
    item = str(b.items["item_id"].iat[5])
    photo = b.image_path(item)
    assert b.search(photo, 1)[0].item_id == item and b.search(photo, 1)[0].score > 0.999
    np.testing.assert_allclose(b.embed(photo), b.vector(item), atol=1e-5)


@pytest.mark.model
def test_strict_refuses_a_broken_calibration(tiny_catalog: Path, tmp_path: Path) -> None:
    cat = read_catalog(tiny_catalog, id_column="sku", image_column="file")
    black = [Image.new("RGB", (96, 96))] * 4  # nothing like the catalogue: ranges all wrong
    with pytest.raises(LookalikeError, match=r"far from fp32.*refused \(strict\)"):
        build_index(cat, tmp_path / "strict", model=MODEL,
                    precision=Int8(calibration=black, strict=True))
    assert not (tmp_path / "strict").exists()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = build_index(cat, tmp_path / "warned", model=MODEL,
                        precision=Int8(calibration=black))
    assert any("far from fp32" in str(w.message) for w in caught)
    assert "far from fp32" in s.precision["warning"]
    assert s.precision["calibration"]["source"] == "given"


@pytest.mark.model
def test_uint8_graph_normalises_like_the_float_path() -> None:
    spec = get_spec(MODEL)
    model = build_torch_model(MODEL)
    pixels = torch.randint(0, 256, (3, spec.input_size, spec.input_size, 3), dtype=torch.uint8)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor(spec.std).view(1, 3, 1, 1)
    float_path = (pixels.permute(0, 3, 1, 2).float() - mean) * inv_std
    assert torch.allclose(normalise_pixels(pixels, mean, inv_std), float_path, atol=1e-5)
    with torch.no_grad():
        f = model.backbone(float_path).mean(dim=(2, 3))
        want = (f / f.norm(dim=1, keepdim=True)).numpy()
    got = create_embedder(MODEL)(pixels.numpy())  # the exported ONNX graph, uint8 in
    np.testing.assert_allclose(got, want, atol=1e-4)


def _fold(src: Path, tmp: Path) -> tuple[Path, Path, object]:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, folded = tmp / "pre.onnx", tmp / "folded.onnx"
    quant_pre_process(str(src), str(pre))
    model = onnx.load(pre)
    centred = fold_normalisation(model)
    onnx.save(model, folded)
    return pre, folded, centred


@pytest.mark.parametrize("net", ["efficientnet-lite0", "deep-ranking", "mobilenet-v2"])
def test_folding_the_normalisation_keeps_the_embeddings(net: str, tmp_path: Path) -> None:
    """The normalisation moves into the convolutions reading it (the backbone's stem; a Deep
    Ranking net's branches through their average pools): exact where the channels share an
    integer mean pixel (efficientnet-lite: 127), a border difference otherwise."""
    if net == "deep-ranking":
        src = export_module(DeepRanking(MODEL, dim=64), 224, tmp_path / "ranking.onnx")
    else:
        src = export_onnx(net)
    pre, folded, centred = _fold(src, tmp_path)
    assert centred is not None and centred.zero == (114 if net == "mobilenet-v2" else 127)
    ops = [n.op_type for n in onnx.load(folded).graph.node]
    assert ops.count("Sub") == 1 and ops.count("Cast") == 1
    pixels = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), np.uint8)
    a, b = (onnx_session(p).run(None, {"pixels": pixels})[0] for p in (pre, folded))
    if net == "mobilenet-v2":  # the padded border is pixel 114 instead of the channel means
        assert np.sum(a * b, axis=1).min() > 0.9999
    else:
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_graphs_of_another_shape_are_left_alone(tmp_path: Path) -> None:
    from torch import nn

    class Grouped(nn.Module):  # normalised pixels read by a grouped convolution
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3, groups=3)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            x = normalise_pixels(pixels, torch.full((1, 3, 1, 1), 127.0),
                                 torch.full((1, 3, 1, 1), 1 / 128))
            return self.conv(x).mean(dim=(2, 3))

    src = export_module(Grouped(), 32, tmp_path / "grouped.onnx")
    _, folded, centred = _fold(src, tmp_path)
    assert centred is None and "Sub" not in {n.op_type for n in onnx.load(folded).graph.node}
