"""The Deep Ranking network and its loss, against hand-written references."""

import numpy as np
import pytest
import torch

from lookalike.embedders import create_embedder
from lookalike.training.network import DeepRanking, subsample4, triplet_loss

BACKBONE = "mobilenet-v2"


def test_loss_matches_a_hand_written_loop() -> None:
    g = torch.Generator().manual_seed(0)
    q, p, n = (torch.nn.functional.normalize(torch.randn(7, 5, generator=g), dim=1)
               for _ in range(3))
    for gap in (0.0, 0.2, 1.0):
        expected = 0.0
        for i in range(7):
            d_p = sum((q[i, j] - p[i, j]) ** 2 for j in range(5))
            d_n = sum((q[i, j] - n[i, j]) ** 2 for j in range(5))
            expected += max(0.0, gap + float(d_p) - float(d_n))
        assert float(triplet_loss(q, p, n, gap)) == pytest.approx(expected / 7, rel=1e-5)
    # satisfied triplets cost nothing
    assert float(triplet_loss(q, q, -q, 0.5)) == 0.0


@pytest.fixture(scope="module")
def model() -> DeepRanking:
    torch.manual_seed(0)
    return DeepRanking(BACKBONE, dim=64).eval()


@pytest.mark.model
def test_output_is_unit_length_and_matches_the_cached_path(model: DeepRanking) -> None:
    px = torch.randint(0, 256, (3, 224, 224, 3), dtype=torch.uint8)
    with torch.no_grad():
        z = model(px)
        assert z.shape == (3, 64)
        np.testing.assert_allclose(z.norm(dim=1).numpy(), 1.0, atol=1e-5)
        # training with a frozen backbone uses the index's vectors and a cached 1/4 photo
        feats = torch.from_numpy(create_embedder(BACKBONE)(px.numpy()))
        cached = model.embed(feats, subsample4(px, model.backbone_spec))
    np.testing.assert_allclose(cached.numpy(), z.numpy(), atol=1e-4)


def test_branches_see_quarter_and_eighth_resolution(model: DeepRanking) -> None:
    seen = {}
    for name in ("branch4", "branch8"):
        getattr(model, name).conv.register_forward_hook(
            lambda mod, inp, out, name=name: seen.__setitem__(name, tuple(inp[0].shape)))
    flat = torch.full((1, 224, 224, 3), 128, dtype=torch.uint8)
    # 2×2 checks of 64 and 192: different photos at full size, the same grey at 1/4 and 1/8
    checks = ((torch.arange(224)[:, None] + torch.arange(224)[None, :]) % 2).bool()
    checked = flat.clone()
    checked[0][checks] = 64
    checked[0][~checks] = 192
    with torch.no_grad():
        a, b = model.normalise(flat), model.normalise(checked)
        assert not torch.equal(a, b)
        small_a, small_b = torch.nn.functional.avg_pool2d(a, 4), torch.nn.functional.avg_pool2d(b, 4)
        assert torch.allclose(model.branch4(small_a), model.branch4(small_b), atol=1e-5)
        assert torch.allclose(model.branch8(torch.nn.functional.avg_pool2d(small_a, 2)),
                              model.branch8(torch.nn.functional.avg_pool2d(small_b, 2)), atol=1e-5)
        model(flat)
    assert seen == {"branch4": (1, 3, 56, 56), "branch8": (1, 3, 28, 28)}
    assert model.branch4.out_dim == 96 * 6 * 6 and model.branch8.out_dim == 96 * 2 * 2
