"""A short training run end to end: train, checkpoint, resume, export, build with the model."""

import json
import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from lookalike import Index, LookalikeError, build_index, read_catalog
from lookalike.build import Int8
from lookalike.cli import cli
from lookalike.training.config import TrainConfig
from lookalike.training.loop import train
from lookalike.training.network import DeepRanking
from lookalike.training.views import cache_views, front_runner

from ..conftest import garment

COLOURS = {"red": (200, 30, 30), "blue": (30, 40, 200), "green": (30, 160, 40)}
SHAPES = ("shirt", "shoe", "bag")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3 types × 3 colours × 4 products × 2 photos, and its mobilenet-v2 index."""
    root = tmp_path_factory.mktemp("shop")
    (root / "img").mkdir()
    rows = []
    for s, shape in enumerate(SHAPES):
        for colour, rgb in COLOURS.items():
            for p in range(4):
                pid = f"{shape}-{colour}-{p}"
                img = garment(tuple(max(0, c - 12 * p) for c in rgb), shape, seed=s * 50 + p)
                for v, view in enumerate([img, img.transpose(Image.FLIP_LEFT_RIGHT)]):
                    view.save(root / "img" / f"{pid}-{v}.jpg")
                    rows.append((f"{pid}-{v}", pid, shape, colour, ("Men", "Women")[p % 2],
                                 f"img/{pid}-{v}.jpg"))
    pd.DataFrame(rows, columns=["id", "product", "type", "colour", "gender", "image_path"]).to_csv(
        root / "shop.csv", index=False)
    cat = read_catalog(root / "shop.csv", product_column="product")
    build_index(cat, root / "index", model="mobilenet-v2")
    # the same photos with every photo its own product (as in myntra-9k)
    build_index(read_catalog(root / "shop.csv"), root / "single", model="mobilenet-v2")
    return {"root": root, "csv": root / "shop.csv", "index": root / "index",
            "single": root / "single"}


CFG = {"category": "type", "color": "colour", "dim": 32, "epochs": 2, "triplets_per_epoch": 300,
       "val_triplets": 60, "batch_size": 64, "test_fraction": 0.2, "val_fraction": 0.25,
       "patience": 5}


@pytest.mark.model
def test_short_training_run_gives_a_model_that_build_uses(shop: dict[str, Path],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "model"
    s = train(shop["index"], out, TrainConfig(**CFG), progress=False, log=lambda _: None)
    assert s.epochs_run == 2 and 1 <= s.best_epoch <= 2
    for name in ("model.onnx", "model.json", "checkpoint.pt", "training_curve.png"):
        assert (out / name).stat().st_size > 0, name
    meta = json.loads((out / "model.json").read_text())
    assert meta["embedder"]["family"] == "deep-ranking" and meta["embedder"]["dim"] == 32
    assert meta["splits"]["train"] > 0 and len(meta["history"]) == 3
    # products have two photos each: the sampler's default uses same-product positives
    assert meta["config"]["p_same_product"] is None

    # the ONNX graph is the whole network: backbone + branches + projection
    full = DeepRanking("mobilenet-v2", 32)
    state = torch.load(out / "checkpoint.pt", weights_only=False)["best_model"]
    full.load_state_dict(state, strict=False)
    px = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    onnx_out = ort.InferenceSession(str(out / "model.onnx")).run(None, {"pixels": px})[0]
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, full.eval()(torch.from_numpy(px)).numpy(), atol=1e-4)

    r = CliRunner().invoke(cli, ["build", str(shop["csv"]), "--product-column", "product",
                                 "--model", str(out), "--out", str(tmp_path / "ix"), "-q"])
    assert r.exit_code == 0, r.output
    ix = Index.open(tmp_path / "ix")
    assert ix.manifest["embedder"]["source"] == str(out.resolve())
    assert ix.embeddings.shape == (72, 32)
    hits = ix.similar("shirt-red-0-0", 3)
    assert hits[0].item_id == "shirt-red-0-1"  # its other photo
    assert len(ix.search(shop["root"] / "img" / "bag-blue-1-0.jpg", 2)) == 2  # embeds new photos
    r = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "ix"), "-r", "type", "-k", "5",
                                 "--split", "test", "--test-fraction", "0.2",
                                 "--val-fraction", "0.25", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["queries/type"] < 72  # the unseen products only


@pytest.mark.model
def test_checkpoint_resume_and_refusals(shop: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "model"
    train(shop["index"], out, TrainConfig(**{**CFG, "epochs": 1}), progress=False,
          log=lambda _: None)
    with pytest.raises(LookalikeError, match="is not empty; resume its training"):
        train(shop["index"], out, TrainConfig(**CFG), progress=False, log=lambda _: None)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    state["config"]["epochs"] = 2  # ask for one more epoch
    torch.save(state, out / "checkpoint.pt")
    lines: list[str] = []
    s = train(shop["index"], out, resume=True, progress=False, log=lines.append)
    assert s.epochs_run == 2 and any("resuming after epoch 1" in x for x in lines)
    assert [h["epoch"] for h in s.history] == [0, 1, 2]
    with pytest.raises(LookalikeError, match="no checkpoint"):
        train(shop["index"], tmp_path / "other", resume=True, progress=False)
    # a resumed run keeps its own index and configuration: others are refused, not ignored
    with pytest.raises(LookalikeError, match="keeps the configuration it was started with"):
        train(shop["index"], out, TrainConfig(**CFG), resume=True, progress=False)
    with pytest.raises(LookalikeError, match="is on index"):
        train(tmp_path, out, resume=True, progress=False)
    r = CliRunner().invoke(cli, ["train", str(shop["index"]), "-o", str(out), "--resume",
                                 "--lr", "0.5", "--epochs", "3"])
    assert r.exit_code == 2 and "--lr, --epochs only apply to a new training" in r.output, \
        r.output
    with pytest.raises(LookalikeError, match=r"column 'style' \(category=\)"):
        train(shop["index"], tmp_path / "x", TrainConfig(**{**CFG, "category": "style"}),
              progress=False)
    r = CliRunner().invoke(cli, ["build", str(shop["csv"]), "--model", str(tmp_path),
                                 "--out", str(tmp_path / "ix")])
    assert r.exit_code == 1 and "nor a trained model folder" in r.output


@pytest.mark.model
def test_cli_triplets_and_train(shop: dict[str, Path], tmp_path: Path) -> None:
    run = CliRunner().invoke
    r = run(cli, ["triplets", str(shop["index"]), "-n", "500", "-o", str(tmp_path / "t.parquet"),
                  "--category", "type", "--color", "colour", "--split", "train",
                  "--test-fraction", "0.2", "--val-fraction", "0.25"])
    assert r.exit_code == 0, r.output
    t = pd.read_parquet(tmp_path / "t.parquet")
    assert len(t) == 500 and set(t.positive_type) <= {"same_product", "same_category_color"}
    r = run(cli, ["evaluate", str(shop["index"]), "-r", "type", "-k", "1",
                  "--triplets", str(tmp_path / "t.parquet"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["count/triplets"] == 500
    r = run(cli, ["train", str(shop["index"]), "-o", str(tmp_path / "m"), "--category", "type",
                  "--color", "colour", "--dim", "16", "--epochs", "1",
                  "--triplets-per-epoch", "200", "--batch-size", "64", "--keep", "gender",
                  "--val-fraction", "0.25", "-q"])
    assert r.exit_code == 0, r.output
    assert "model written to" in r.output and (tmp_path / "m" / "model.onnx").exists()
    state = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=False)
    assert list(state["config"]["keep"]) == ["gender"]
    assert len([k for k in state["labels"] if k.endswith("weight")]) == 3  # type, colour, gender
    r = run(cli, ["train", str(shop["index"]), "-o", str(tmp_path / "m2"), "--category", "type",
                  "--color", "colour", "--keep", "size", "-q"])
    assert r.exit_code == 1 and "column 'size' (--keep)" in r.output


@pytest.mark.model
def test_finetuning_the_last_stages(shop: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    cfg = TrainConfig(**{**CFG, "epochs": 1, "finetune_stages": 2, "p_same_product": 0.5})
    train(shop["index"], out, cfg, progress=False, log=lambda _: None)
    state = torch.load(out / "checkpoint.pt", weights_only=False)["best_model"]
    pretrained = DeepRanking("mobilenet-v2", 32).state_dict()
    changed = {k.split(".")[2] for k, v in state.items() if k.startswith("features.")
               and v.dtype.is_floating_point and not torch.equal(v, pretrained[k])}
    # mobilenet-v2 has 19 feature layers: only the last two (17, 18) moved; batch-norm
    # statistics stay as pretrained
    assert changed == {"17", "18"}
    assert all(torch.equal(state[k], pretrained[k]) for k in state if "running_" in k)
    full = DeepRanking("mobilenet-v2", 32)
    full.load_state_dict(state)
    px = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    onnx_out = ort.InferenceSession(str(out / "model.onnx")).run(None, {"pixels": px})[0]
    with torch.no_grad():
        np.testing.assert_allclose(onnx_out, full.eval()(torch.from_numpy(px)).numpy(), atol=1e-4)
    # the cached activations come from an ONNX export of the frozen front: same numbers
    run = front_runner(full, 2, tmp_path)
    with torch.no_grad():
        ref = full.front(full.normalise(torch.from_numpy(px)), 2).numpy()
    np.testing.assert_allclose(run(px), ref, atol=1e-3)
    with pytest.raises(LookalikeError, match="cannot tune 40"):
        train(shop["index"], tmp_path / "x", TrainConfig(**{**CFG, "finetune_stages": 40}),
              progress=False)


@pytest.mark.model
@pytest.mark.parametrize("tune", [0, 1])
def test_single_photo_products_train_on_augmented_views(shop: dict[str, Path], tmp_path: Path,
                                                        tune: int) -> None:
    lines: list[str] = []
    cfg = TrainConfig(**{**CFG, "epochs": 1, "p_same_product": 0.9, "finetune_stages": tune})
    s = train(shop["single"], tmp_path / "m", cfg, progress=False, log=lines.append)
    assert "p_same_product=0.9" in lines[0]
    assert 0 <= s.history[-1]["val_triplet_accuracy"] <= 1
    # by default, one photo per product means no same-product positives at all
    train(shop["single"], tmp_path / "d", TrainConfig(**{**CFG, "epochs": 1}), progress=False,
          log=lines.append)
    assert any("p_same_product=0.0" in x for x in lines)


def test_augmented_views_differ_but_keep_the_garment() -> None:
    from lookalike.training.views import augment

    img = garment((200, 30, 30), "shirt", size=96)
    views = [np.asarray(augment(img, np.random.default_rng(s)), dtype=float) for s in range(4)]
    assert all(v.ndim == 3 and v.shape[2] == 3 for v in views)
    assert all(min(v.shape[:2]) >= int(96 * 0.7) for v in views)  # crops keep ≥ 70 % a side
    assert len({v.tobytes() for v in views}) == 4  # each seed its own view
    # still a red garment on a light background: the reddest pixels stay red
    for v in views:
        red = v[..., 0] - v[..., 1]
        assert red.max() > 100


@pytest.mark.model
def test_training_keeps_the_index_preprocessing(shop: dict[str, Path], tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from lookalike.ingest.images import load_model_input
    from lookalike.training.views import load_pixels

    cat = read_catalog(shop["csv"], product_column="product")
    build_index(cat, tmp_path / "ix", model="mobilenet-v2", preprocess="crop")
    ix = Index.open(tmp_path / "ix")
    with ThreadPoolExecutor(2) as pool:  # the branches see the photos as the index did
        px = load_pixels(ix, [0, 5], 224, pool)
    for got, row in zip(px, [0, 5]):
        path = ix.image_path(ix.items["item_id"].iat[row])
        assert np.array_equal(got, load_model_input(path, 224, preprocess=ix.preprocess))
    out = tmp_path / "model"
    train(tmp_path / "ix", out, TrainConfig(**{**CFG, "epochs": 1}), progress=False,
          log=lambda _: None)
    assert json.loads((out / "model.json").read_text())["preprocess"]["steps"] == ["crop"]
    kept = build_index(cat, tmp_path / "ix2", model=str(out))  # the model's steps by default
    assert Index.open(kept.path).preprocess.steps == ("crop",)
    plain = build_index(cat, tmp_path / "ix3", model=str(out), preprocess="none")
    assert Index.open(plain.path).preprocess.steps == ()


@pytest.mark.model
def test_an_int8_index_trains_on_fp32_features(shop: dict[str, Path], tmp_path: Path) -> None:
    """The trained model exports the fp32 backbone, so the features it learns from are fp32's,
    not the int8 index's vectors."""
    cat = read_catalog(shop["csv"], product_column="product")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # synthetic photos: the int8 check may warn
        build_index(cat, tmp_path / "int8", model="mobilenet-v2",
                    precision=Int8(calibration_size=32))
    ix8, ix32 = Index.open(tmp_path / "int8"), Index.open(shop["index"])
    rows = np.arange(12)
    model = DeepRanking("mobilenet-v2", 32, with_backbone=False)
    feats, small = cache_views(ix8, model, rows, 0, progress=False)
    np.testing.assert_allclose(feats.numpy(), np.asarray(ix32.embeddings)[rows], atol=1e-5)
    assert not np.allclose(feats.numpy(), np.asarray(ix8.embeddings)[rows], atol=1e-3)
    assert small.shape == (12, 3, 56, 56)


SMALL = {"dim": 16, "epochs": 1, "triplets_per_epoch": 200, "val_triplets": 40,
         "batch_size": 64, "test_fraction": 0.2, "val_fraction": 0.25}


@pytest.mark.model
@pytest.mark.parametrize("shape", ["products only", "category only", "category and colour"])
def test_training_takes_its_roles_from_the_index(shop: dict[str, Path], tmp_path: Path,
                                                  shape: str) -> None:
    """No role options: a catalogue of products with several photos and no labels, one with a
    category and no colour, and one named like myntra-9k (articleType, baseColour)."""
    df = pd.read_csv(shop["csv"])
    keep = {"products only": ["id", "product", "image_path"],
            "category only": ["id", "product", "type", "image_path"],
            "category and colour": ["id", "product", "type", "colour", "image_path"]}[shape]
    df = df[keep].rename(columns={"colour": "baseColour"})
    if shape == "category and colour":
        df = df.rename(columns={"type": "articleType"})
    df.to_csv(shop["root"] / "roles.csv", index=False)
    cat = read_catalog(shop["root"] / "roles.csv", shop["root"], product_column="product",
                       category_column="type" if shape == "category only" else None)
    build_index(cat, tmp_path / "ix", model="mobilenet-v2")
    lines: list[str] = []
    s = train(tmp_path / "ix", tmp_path / "m", TrainConfig(**SMALL), progress=False,
              log=lines.append)
    config = json.loads((tmp_path / "m" / "model.json").read_text())["config"]
    want = {"products only": (None, None), "category only": ("type", None),
            "category and colour": ("articleType", "baseColour")}[shape]
    assert (config["category"], config["color"]) == want
    assert any(x.startswith("note:") for x in lines) == (shape != "category and colour")
    assert set(s.verdict["metrics"]) == {
        "products only": {"recall@10/product"},
        "category only": {"precision@10/type", "recall@10/product"},
        "category and colour": {"precision@10/articleType",
                                "precision@10/articleType+baseColour", "recall@10/product"},
    }[shape]
    assert any("than the pretrained backbone" in x for x in lines)
    # a role named and absent is still an error
    with pytest.raises(LookalikeError, match=r"column 'colour' \(color=\)"):
        train(tmp_path / "ix", tmp_path / "m2", TrainConfig(**{**SMALL, "color": "colour"}),
              progress=False, log=lambda _: None)


@pytest.mark.model
def test_split_by_photo_trains_every_product(shop: dict[str, Path], tmp_path: Path) -> None:
    from lookalike.quality.splits import photo_splits

    ids = [f"p{i}-{v}" for i in range(200) for v in range(3)]
    products = [i.split("-")[0] for i in ids]
    split = photo_splits(ids, products, test=0.3, val=0.3)
    frame = pd.DataFrame({"product": products, "split": split})
    assert (frame.groupby("product")["split"].apply(lambda s: (s == "train").any())).all()
    assert {"val", "test"} <= set(split)  # and some photos are held out
    assert list(photo_splits(ids, products, test=0.3, val=0.3)) == list(split)  # seeded
    s = train(shop["index"], tmp_path / "m", TrainConfig(**{**CFG, **SMALL, "split_by": "photo"}),
              progress=False, log=lambda _: None)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["config"]["split_by"] == "photo" and meta["splits"]["val"] > 0
    assert "recall@10/product" in s.verdict["metrics"]


@pytest.mark.model
def test_train_says_when_it_did_not_help(shop: dict[str, Path], tmp_path: Path) -> None:
    """A head that does not learn (learning rate 0) is worse than the backbone it projects:
    the run says so, and --require-better turns that into a failure."""
    args = ["train", str(shop["index"]), "--category", "type", "--color", "colour", "--dim", "8",
            "--epochs", "1", "--triplets-per-epoch", "100", "--batch-size", "50", "--lr", "0",
            "--val-fraction", "0.25", "-q"]
    r = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "does NOT beat the pretrained backbone" in r.output
    assert json.loads((tmp_path / "a" / "model.json").read_text())["verdict"]["better"] is False
    r = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "b"), "--require-better"])
    assert r.exit_code == 1 and (tmp_path / "b" / "model.onnx").exists()


@pytest.mark.model
def test_columns_are_said_once(shop: dict[str, Path], tmp_path: Path) -> None:
    """A catalogue with its own column names: after one build with the column flags, add,
    train, build --model and evaluate need none."""
    df = pd.read_csv(shop["csv"])
    shop_df = pd.DataFrame({"sku": df["id"], "title": df["product"], "type": df["type"],
                            "colour": df["colour"], "picture": df["image_path"]})
    shop_df.iloc[:60].to_csv(shop["root"] / "own.csv", index=False)
    shop_df.iloc[60:].to_csv(shop["root"] / "own-delta.csv", index=False)
    run = CliRunner().invoke
    r = run(cli, ["build", str(shop["root"] / "own.csv"), "-o", str(tmp_path / "ix"), "-q",
                  "--model", "mobilenet-v2", "--id-column", "sku", "--image-column", "picture",
                  "--product-column", "title", "--category-column", "type",
                  "--color-column", "colour"])
    assert r.exit_code == 0, r.output
    r = run(cli, ["add", str(tmp_path / "ix"), str(shop["root"] / "own-delta.csv"), "-q"])
    assert r.exit_code == 0 and "12 added" in r.output, r.output
    r = run(cli, ["train", str(tmp_path / "ix"), "-o", str(tmp_path / "m"), "--dim", "16",
                  "--epochs", "1", "--triplets-per-epoch", "200", "--batch-size", "64",
                  "--val-fraction", "0.25", "-q"])
    assert r.exit_code == 0, r.output
    assert "roles: category 'type', colour 'colour'" in r.output
    assert "than the pretrained backbone" in r.output
    r = run(cli, ["build", str(shop["root"] / "own.csv"), "--model", str(tmp_path / "m"),
                  "-o", str(tmp_path / "ix2"), "-q"])
    assert r.exit_code == 0, r.output
    ix2 = Index.open(tmp_path / "ix2")
    assert ix2.category == "type" and ix2.color == "colour" and len(ix2) == 60
    assert ix2.items["product_id"].iloc[0] == shop_df["title"].iloc[0]
    pd.DataFrame({"image_path": ["img/shirt-red-0-0.jpg", "img/shoe-blue-1-1.jpg"],
                  "label": ["top", "footwear"]}).to_csv(shop["root"] / "q.csv", index=False)
    (shop["root"] / "m.yaml").write_text("attribute: type\nlabels:\n  top: [shirt]\n"
                                         "  footwear: [shoe]\n")
    r = run(cli, ["evaluate", str(tmp_path / "ix"), str(tmp_path / "ix2"), "-k", "1,5",
                  "--queries", str(shop["root"] / "q.csv"), "--mapping",
                  str(shop["root"] / "m.yaml"), "--json", "-q"])
    assert r.exit_code == 0, r.output
    assert all("accuracy@1/query:type" in v for v in json.loads(r.stdout).values())


@pytest.mark.model
def test_outside_photos_train_by_group(shop: dict[str, Path], tmp_path: Path) -> None:
    """Labelled outside photos are anchors; the held-out groups are never read, and an epoch
    worse on the outside validation photos than the backbone never counts as the best."""
    rows = []
    for i, shape in enumerate(SHAPES * 16):
        img = garment((90 + 5 * i, 90, 200 - 4 * i), shape, size=120, seed=500 + i)
        img = img.rotate(8 * (i % 3), fillcolor=(200, 190, 170))  # not a catalogue photo
        img.save(shop["root"] / "img" / f"out-{i}.jpg")
        rows.append((f"img/out-{i}.jpg", {"shirt": "top", "shoe": "footwear", "bag": "bag"}[shape],
                     f"person{i % 24}"))
    pd.DataFrame(rows, columns=["image_path", "label", "sender_id"]).to_csv(
        shop["root"] / "outside.csv", index=False)
    (shop["root"] / "outside.yaml").write_text(
        "attribute: type\nlabels:\n  top: [shirt]\n  footwear: [shoe]\n  bag: [bag]\n")
    lines: list[str] = []
    cfg = TrainConfig(**{**CFG, "queries": str(shop["root"] / "outside.csv"),
                         "mapping": str(shop["root"] / "outside.yaml"),
                         "query_group_column": "sender_id", "query_share": 0.5,
                         "query_test_fraction": 0.4, "query_val_fraction": 0.4})
    s = train(shop["index"], tmp_path / "m", cfg, progress=False, log=lines.append)
    said = next(x for x in lines if x.startswith("outside photos:"))
    assert "held-out groups never read" in said
    key = "precision@10/query:type"
    assert key in s.verdict["metrics"] and f"val_{key}" in s.history[1]
    if s.best_epoch:  # the chosen epoch is not worse than the backbone on outside photos
        assert s.history[s.best_epoch][f"val_{key}"] >= s.history[0][f"pretrained_{key}"] \
            or any("no epoch beat" in x for x in lines)
    # the split by sender is the one lookalike evaluate selects
    from lookalike.quality.inputs import read_query_set

    held = read_query_set(shop["root"] / "outside.csv", group_column="sender_id", split="test",
                          test_fraction=0.4)
    trained = read_query_set(shop["root"] / "outside.csv", group_column="sender_id",
                             split="train", test_fraction=0.4)
    assert set(held.items["sender_id"]).isdisjoint(trained.items["sender_id"])
    n_fit, n_val = (int(w) for w in said.split(":")[1].split()[::3][:2])
    assert n_fit + n_val == len(trained) and len(held) > 0
    with pytest.raises(LookalikeError, match="needs their label mapping="):
        train(shop["index"], tmp_path / "m2", TrainConfig(**{**CFG, "queries": cfg.queries}),
              progress=False, log=lambda _: None)


@pytest.mark.model
def test_camera_views_train(shop: dict[str, Path], tmp_path: Path) -> None:
    """Camera-like views: each step changes the photo and keeps it a picture of the garment;
    a run with all of them trains, and an unknown step is refused."""
    from lookalike.training.config import CAMERA_STEPS
    from lookalike.training.views import camera

    img = Image.open(shop["root"] / "img" / "shirt-red-0-0.jpg").convert("RGB")
    a = np.asarray(img, np.float32)
    for step in CAMERA_STEPS:
        out = camera(img, np.random.default_rng(1), (step,))
        b = np.asarray(out.resize(img.size), np.float32)
        assert out.mode == "RGB" and np.abs(a - b).mean() > 1, step
    same = camera(img, np.random.default_rng(1), CAMERA_STEPS)
    assert np.array_equal(np.asarray(same),
                          np.asarray(camera(img, np.random.default_rng(1), CAMERA_STEPS)))
    s = train(shop["index"], tmp_path / "m", TrainConfig(**{**CFG, **SMALL,
                                                            "camera": CAMERA_STEPS}),
              progress=False, log=lambda _: None)
    assert s.epochs_run == 1 and "camera" in json.loads(
        (tmp_path / "m" / "model.json").read_text())["config"]
    with pytest.raises(LookalikeError, match="unknown camera step"):
        train(shop["index"], tmp_path / "m2", TrainConfig(**{**CFG, "camera": ("blur",)}),
              progress=False, log=lambda _: None)


def test_outside_triplets_do_not_depend_on_string_hashing() -> None:
    """The same seed draws the same outside triplets in every process (Python salts string
    hashes per process, so a loop over a set of labels would not)."""
    import subprocess
    import sys

    code = ("import numpy as np\n"
            "from lookalike.training.outside import Outside, outside_triplets\n"
            "labels = [f'label{i % 9}' for i in range(90)]\n"
            "relevant = {f'label{j}': np.arange(200) % 9 == j for j in range(9)}\n"
            "out = Outside(200, [''] * 90, labels, relevant, {}, np.arange(60), np.arange(60, 90),"
            " 'k')\n"
            "t = outside_triplets(out, np.arange(200), 500, 3)\n"
            "print(t.query.tolist(), t.positive.tolist(), t.negative.tolist())\n")
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout
            for seed in ("1", "2", "3")}
    assert len(runs) == 1


def _outside_photos(shop: dict[str, Path]) -> tuple[str, str]:
    """48 labelled photos unlike the catalogue's (other sizes, rotated, tinted), 24 senders;
    their labels map to sets of types (``top`` is right as a shirt or a bag)."""
    rows = []
    for i, shape in enumerate(SHAPES * 16):
        path = shop["root"] / "img" / f"clf-{i}.jpg"
        if not path.exists():
            img = garment((90 + 5 * i, 90, 200 - 4 * i), shape, size=120, seed=900 + i)
            img.rotate(8 * (i % 3), fillcolor=(200, 190, 170)).save(path)
        rows.append((f"img/clf-{i}.jpg", {"shirt": "top", "shoe": "footwear", "bag": "bag"}[shape],
                     f"person{i % 24}"))
    csv = shop["root"] / "clf.csv"
    pd.DataFrame(rows, columns=["image_path", "label", "sender_id"]).to_csv(csv, index=False)
    yaml = shop["root"] / "clf.yaml"
    yaml.write_text("attribute: type\nlabels:\n  top: [shirt, bag]\n  footwear: [shoe]\n"
                    "  bag: [bag]\n")
    return str(csv), str(yaml)


@pytest.mark.model
def test_classifier_only_gives_a_model_that_build_and_search_use(shop: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    """--classifier-only keeps the index's embedding (the model embeds exactly as the
    backbone does), fits the category classifier on catalogue and outside photos, says how
    it compares with the vote; an index built with the model re-ranks with it by default,
    and its searches are the lists lookalike evaluate measures."""
    from lookalike.ingest.catalog import label_codes
    from lookalike.search.classifier import load_head
    from lookalike.search.rerank import Rerank, reranked

    queries, mapping = _outside_photos(shop)
    lines: list[str] = []
    cfg = TrainConfig(**{**CFG, "classifier_only": True, "queries": queries, "mapping": mapping,
                         "query_group_column": "sender_id", "query_test_fraction": 0.4,
                         "query_val_fraction": 0.4})
    out = tmp_path / "clf"
    s = train(shop["index"], out, cfg, progress=False, log=lines.append)
    assert any(x.startswith("category classifier (3 type values") for x in lines), lines
    assert s.verdict["against"] == "category vote" and "better" in s.verdict
    meta = json.loads((out / "model.json").read_text())
    assert meta["classifier"]["outside_weight"] in (0.5, 1.0, 2.0, 4.0)
    head = load_head(out)
    assert head.column == "type" and head.classes == ["bag", "shirt", "shoe"]
    ix = Index.open(shop["index"])
    built = build_index(read_catalog(shop["csv"], product_column="product",
                                     category_column="type"), tmp_path / "ix", model=str(out))
    new = Index.open(built.path)
    # the same embedding as the backbone's index, and the classifier by default
    assert np.allclose(new.embeddings, ix.embeddings, atol=1e-5)
    assert new.rerank == Rerank(classify=True) and new.classifier is not None
    g = np.asarray(new.embeddings, np.float32)
    items = new.items
    codes = label_codes(items, ["type"])
    values = items["type"].tolist()
    ranker = reranked(Rerank(classify=True), codes, lambda q: np.array(
        [codes[values.index(c)] for c in head.predict(q)]))
    ids = items["item_id"].tolist()
    for row in range(0, len(ids), 5):
        want, _ = ranker(g[row:row + 1], g, 8, self_rows=np.array([row]))
        hits = new.similar(ids[row], 8)
        assert [h.item_id for h in hits] == [ids[r] for r in want[0]]
        predicted = head.predict(g[row:row + 1])[0]
        assert hits[0].metadata["type"] == predicted  # its category first
    snap = new.snapshot()
    batched = new.similar_slots(snap, [snap.slot(i) for i in ids], [6] * len(ids))
    assert [[h.item_id for h in b] for b in batched] == \
        [[h.item_id for h in new.similar(i, 6)] for i in ids]
    # a photo search ranks the classifier's category first
    photo = shop["root"] / "img" / "clf-1.jpg"
    hits = new.search(photo, 5)
    assert hits[0].metadata["type"] == head.predict(new.embed(photo))[0]
    # the backbone's index has no classifier: classify is refused, with the way to get one
    plain = build_index(read_catalog(shop["csv"], category_column="type"), tmp_path / "plain",
                        model="mobilenet-v2")
    with pytest.raises(LookalikeError, match="no category classifier"):
        Index.open(plain.path).similar(ids[0], 3, rerank="classify")
    with pytest.raises(LookalikeError, match="category classifier"):
        build_index(read_catalog(shop["csv"], category_column="type"), tmp_path / "no",
                    model="mobilenet-v2", rerank="classify")


@pytest.mark.model
def test_a_changed_classifier_is_refused(shop: dict[str, Path], tmp_path: Path) -> None:
    """An index never re-ranks with a classifier other than the one it was built with."""
    from lookalike.errors import IndexFormatError
    from lookalike.search.classifier import load_head

    out = tmp_path / "clf"
    train(shop["index"], out, TrainConfig(**{**CFG, "classifier_only": True}), progress=False,
          log=lambda _: None)
    built = build_index(read_catalog(shop["csv"], product_column="product",
                                     category_column="type"), tmp_path / "ix", model=str(out))
    head = load_head(out)
    head.bias[0] += 1.0
    head.save(out)
    with pytest.raises(IndexFormatError, match="changed since the index was built"):
        Index.open(built.path).similar("shirt-red-0-0", 3)
    with pytest.raises(LookalikeError, match="needs a category column"):
        train(shop["index"], tmp_path / "x", TrainConfig(**{**CFG, "category": None,
                                                            "color": None,
                                                            "classifier_only": True}),
              progress=False, log=lambda _: None)


@pytest.mark.model
def test_full_training_fits_a_classifier_when_it_beats_the_vote(shop: dict[str, Path],
                                                                tmp_path: Path) -> None:
    lines: list[str] = []
    s = train(shop["index"], tmp_path / "m", TrainConfig(**{**CFG, **SMALL}), progress=False,
              log=lines.append)
    meta = json.loads((s.out / "model.json").read_text())
    info = meta["classifier"]
    assert set(info["metrics"]) == set(s.verdict["metrics"])
    kept = (s.out / "category_head.npz").is_file()
    assert kept == info["better_than_vote"]
    assert kept or any("not kept" in x for x in lines)


@pytest.mark.model
def test_the_server_keeps_classified_lists_fresh(shop: dict[str, Path], tmp_path: Path) -> None:
    """An index re-ranked by its classifier: the server's kept similar lists (the path that
    asks the classifier for a list's category) equal a fresh search, before and after
    additions of every category by another process."""
    import time

    from fastapi.testclient import TestClient

    from lookalike.server import create_app

    out = tmp_path / "clf"
    train(shop["index"], out, TrainConfig(**{**CFG, "classifier_only": True}), progress=False,
          log=lambda _: None)
    built = build_index(read_catalog(shop["csv"], product_column="product",
                                     category_column="type"), tmp_path / "ix", model=str(out))
    client = TestClient(create_app(built.path))
    ids = Index.open(built.path).items["item_id"].tolist()

    def fresh() -> None:
        ix = Index.open(built.path)
        for item_id in ix.items["item_id"]:
            got = client.get(f"/items/{item_id}/similar", params={"k": 20}).json()["results"]
            assert [h["item_id"] for h in got] == [h.item_id for h in ix.similar(item_id, 20)]

    fresh()  # fills every list
    other = Index.open(built.path)
    rng = np.random.default_rng(0)
    for n, item_id in enumerate(ids[::9]):  # far from everything, of each category in turn
        v = -other.vector(item_id) + 0.01 * rng.normal(size=other.spec.dim)
        other.add([{"item_id": f"new-{n}", "type": SHAPES[n % 3]}],
                  vectors=(v / np.linalg.norm(v))[None].astype(np.float32))
    time.sleep(0.6)  # the server follows the folder five times a second
    fresh()
