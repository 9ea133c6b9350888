import numpy as np
import pytest
import torch

from lookalike import LookalikeError
from lookalike.embedders import (
    build_torch_model,
    create_embedder,
    export_onnx,
    get_spec,
    list_embedders,
)


def test_registry_lists_and_rejects() -> None:
    assert list_embedders() == ["color-histogram", "efficientnet-lite0", "efficientnet-lite2",
                                "mobilenet-v2"]
    with pytest.raises(LookalikeError, match="unknown embedder 'resnet'.*color-histogram, "
                       "efficientnet-lite0, efficientnet-lite2, mobilenet-v2"):
        create_embedder("resnet")


@pytest.mark.model
@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite2", "mobilenet-v2"])
def test_onnx_matches_eager_torch_and_is_normalised(name: str) -> None:
    e = create_embedder(name)
    s = e.spec.input_size
    x = np.random.default_rng(0).integers(0, 256, (3, s, s, 3), dtype=np.uint8)
    out = e(x)
    assert out.dtype == np.float32 and out.shape == (3, e.spec.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        ref = build_torch_model(name)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # pretrained, not random: ImageNet features of different pictures differ but not wildly
    assert 0.2 < float(out[0] @ out[1]) < 0.999


def test_onnx_export_is_cached() -> None:
    p = export_onnx("mobilenet-v2")
    mtime = p.stat().st_mtime_ns
    assert export_onnx("mobilenet-v2") == p and p.stat().st_mtime_ns == mtime


def test_spec_carries_preprocessing() -> None:
    s = get_spec("efficientnet-lite2")
    assert (s.input_size, s.dim, s.mean, s.std) == (260, 1280, (127.0,) * 3, (128.0,) * 3)
    assert s.preprocessing()["input_size"] == 260


@pytest.mark.model
def test_wrong_input_is_refused() -> None:
    e = create_embedder("mobilenet-v2")
    with pytest.raises(ValueError, match=r"uint8 pixels of shape \(N, 224, 224, 3\)"):
        e(np.zeros((1, 100, 100, 3), np.uint8))
    assert e(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 1280)


def test_color_histogram_is_the_joint_8x8x8_rgb_histogram() -> None:
    e = create_embedder("color-histogram")
    x = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    x[2] = 0
    x[2, :56, :, 0] = 255  # a quarter pure red (bin 7·64), the rest black (bin 0)
    out = e(x)
    q = (x // 32).astype(np.int64)
    bins = (q[..., 0] * 64 + q[..., 1] * 8 + q[..., 2]).reshape(3, -1)
    ref = np.stack([np.bincount(b, minlength=512) for b in bins]).astype(np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert np.nonzero(out[2])[0].tolist() == [0, 448]
    np.testing.assert_allclose(out[2, [0, 448]], np.array([3, 1]) / np.sqrt(10), atol=1e-6)
    with torch.no_grad():
        np.testing.assert_allclose(build_torch_model("color-histogram")(torch.from_numpy(x)),
                                   out, atol=1e-6)
