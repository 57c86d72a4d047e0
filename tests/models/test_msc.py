"""MSC fast path: shapes, edge cases, and parity with the dense reference."""

from __future__ import annotations

import pytest
import torch

from mscn_geo.models import MSC, dual_topk_attention
from tests.reference_msc import dense_msc

PUBLISHED_KEYS = {
    "q.weight",
    "kv.weight",
    "proj.weight",
    "proj.bias",
    "layer_norm.weight",
    "layer_norm.bias",
    "attn1",
    "attn2",
}


def _msc(dim: int = 64, k1: int = 2, k2: int = 6, dtype=torch.float64) -> MSC:
    torch.manual_seed(0)
    m = MSC(dim, num_heads=8, k1=k1, k2=k2).to(dtype)
    with torch.no_grad():  # unequal weights so a swapped map would show
        m.attn1.fill_(0.7)
        m.attn2.fill_(0.2)
    return m


def _assert_matches_dense(m: MSC, x: torch.Tensor, y: torch.Tensor) -> None:
    """Output and every gradient (inputs, parameters) equal the dense reference's."""
    out, ref = m(x, y), dense_msc(m, x, y)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(out)
    ours = torch.autograd.grad((out * g).sum(), [x, y, *m.parameters()])
    theirs = torch.autograd.grad((ref * g).sum(), [x, y, *m.parameters()])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("hw", "kv_hw"), [((7, 7), (28, 28)), ((5, 9), (11, 13)), ((3, 2), (4, 7))]
)
def test_output_shape_square_and_non_square(hw, kv_hw):
    m = _msc(dtype=torch.float32)
    x = torch.randn(2, 64, *hw)
    out = m(x, torch.randn(2, 64, *kv_hw))
    assert out.shape == x.shape


@pytest.mark.parametrize(
    ("hw", "kv_hw", "k1", "k2"),
    [
        ((7, 7), (28, 28), 2, 6),
        ((5, 9), (11, 13), 2, 6),
        ((4, 4), (9, 9), 6, 2),  # k1 > k2: the second map is the bigger one
        ((3, 3), (5, 5), 1, 1),
        ((1, 1), (1, 1), 2, 6),  # N1 // k == 0: clamped to 1, no NaN
        ((2, 3), (2, 2), 2, 6),
    ],
)
def test_matches_dense_reference_forward_and_backward(hw, kv_hw, k1, k2):
    m = _msc(k1=k1, k2=k2)
    x = torch.randn(2, 64, *hw, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 64, *kv_hw, dtype=torch.float64, requires_grad=True)
    _assert_matches_dense(m, x, y)


@pytest.mark.parametrize("budget", [40, 300, 5000])
def test_chunked_passes_match_the_dense_reference(monkeypatch, budget):
    """Score chunks of part of a map's rows (40, 300) or of several whole maps
    (5000; 16 maps of 30 x 63 scores): forward and every gradient as with the
    whole score tensor."""
    import mscn_geo.models.sparse_attention as sparse

    monkeypatch.setattr(sparse, "_CHUNK_ELEMENTS", budget)
    m = _msc()
    x = torch.randn(2, 64, 5, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 64, 7, 9, dtype=torch.float64, requires_grad=True)
    _assert_matches_dense(m, x, y)


def test_chunks_cover_the_scores_once_with_a_bigger_budget_on_cuda():
    """A batch of 128 tiles (1,024 maps of 196 x 3,136 scores): one map per chunk on
    the CPU (L3-sized), 106 maps per chunk on CUDA (few large kernels)."""
    from mscn_geo.models.sparse_attention import _chunks

    for device, count in (("cpu", 1024), ("cuda", 10)):
        chunks = _chunks(1024, 196, 3136, torch.device(device))
        assert len(chunks) == count
        covered = torch.zeros(1024, 196, dtype=torch.int32)
        for maps, rows in chunks:
            covered[maps, rows] += 1
        assert bool((covered == 1).all())


def test_fp32_parity_within_1e4_at_a_real_size():
    m = _msc(dim=128, dtype=torch.float32)
    x, y = torch.randn(2, 128, 7, 7), torch.randn(2, 128, 28, 28)
    with torch.inference_mode():
        assert (m(x, y) - dense_msc(m, x, y)).abs().max() < 1e-4


def test_small_maps_give_no_nan():
    m = _msc(dtype=torch.float32)
    out = m(torch.randn(1, 64, 1, 1), torch.randn(1, 64, 1, 1))
    assert torch.isfinite(out).all()


def test_tied_scores_keep_every_tied_entry_and_normalise():
    # All keys equal: every score ties, so each map keeps every entry and the
    # attention is the plain mean of v, whatever k says.
    q = torch.randn(1, 2, 3, 4)
    k = torch.ones(1, 2, 10, 4)
    v = torch.randn(1, 2, 10, 4)
    a1, a2 = torch.tensor([0.7]), torch.tensor([0.2])
    out = dual_topk_attention(q, k, v, a1, a2, 5, 1, 0.5)
    expected = 0.9 * v.mean(2, keepdim=True).expand_as(out)
    torch.testing.assert_close(out, expected)


def test_bf16_autocast_on_cpu_is_finite_and_close():
    m = _msc(dtype=torch.float32)
    x, y = torch.randn(2, 64, 7, 7), torch.randn(2, 64, 14, 14)
    with torch.inference_mode():
        ref = m(x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = m(x * 1e3, y * 1e3)  # large activations: no overflow trouble
            low_scaled = m(x, y)
    assert torch.isfinite(low).all()
    assert (low_scaled.float() - ref).abs().max() < 0.1


def test_state_dict_names_are_the_published_ones():
    assert set(_msc().state_dict()) == PUBLISHED_KEYS


def test_attention_dropout_path_matches_fused_when_dropout_is_off():
    m = _msc(dtype=torch.float64)
    m.train()
    x, y = (
        torch.randn(1, 64, 3, 3, dtype=torch.float64),
        torch.randn(1, 64, 6, 6, dtype=torch.float64),
    )
    m.attn_drop.p = 0.0
    fused = m(x, y)
    m.attn_drop.p = 1e-12  # takes the unfused path, dropout practically off
    torch.testing.assert_close(m(x, y), fused)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_amp_matches_fp32(dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    m = _msc(dim=128, dtype=torch.float32).cuda()
    x, y = torch.randn(4, 128, 7, 7, device="cuda"), torch.randn(4, 128, 28, 28, device="cuda")
    ref = dense_msc(m, x, y)
    with torch.autocast("cuda", dtype=dtype):
        out = m(x, y)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.05
    xg = x.clone().requires_grad_()
    with torch.autocast("cuda", dtype=dtype):
        m(xg, y).float().sum().backward()
    assert torch.isfinite(xg.grad).all()


@pytest.mark.parametrize(
    ("shape", "k", "threads"),
    [
        ((3, 700, 1024), 512, 2),  # rows shared out to two threads
        ((5, 333, 256), 42, 3),  # uneven parts
        ((1, 1, 64), 32, 2),  # too small to share: one thread
        ((2, 300, 1024), 1024, 2),  # k = n: the whole row
    ],
)
def test_cpu_selection_gives_the_k_largest_of_each_row(shape, k, threads, monkeypatch):
    from mscn_geo.models import sparse_attention

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    x = torch.randn(shape)
    x[0, 0] = 1.0  # a row of ties
    got = sparse_attention._select_cpu(x, k)
    want = torch.topk(x, k, dim=-1).values
    assert got.shape == (*shape[:-1], k)
    torch.testing.assert_close(got.sort(-1).values, want.sort(-1).values, rtol=0, atol=0)
