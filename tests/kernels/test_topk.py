"""The running top-k of a blocked kNN scan (``kernels.topk``): the C++ kernel and the PyTorch path against the
reference, on random rows, ragged and short rows, dead columns, an earlier block's best, bf16 ties and rows
built to defeat a threshold (ascending scores, all equal, the top-k in one strided group)."""

from __future__ import annotations

import shutil

import pytest
import torch

from kernels import cpu_build
from kernels.topk import cpu_impl, rerank_topk, rerank_topk_reference, topk_merge, topk_merge_reference
from kernels.topk.torch_impl import block_topk, topk_merge_torch

INF = float("inf")


def cpp():
    if cpu_impl.extension() is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler: the PyTorch path runs (tested here too)")
    assert cpu_impl.extension() is not None, "g++ is here but the C++ top-k kernel was not built (see the reason)"
    return cpu_impl.topk_merge_cpu


PATHS = {"cpp": lambda: cpp(), "torch": lambda: topk_merge_torch}


def check(result, scores, k, lo, limit, prev):
    """Values equal to the reference's (the top-k values are unique even where ties make the slots not), each
    finite value the score at its slot (a live column of the block, or a slot of prev), no slot twice."""
    v, s = result
    ref_v, _ = topk_merge_reference(scores, k, lo, limit, prev)
    assert v.shape == s.shape == (scores.shape[0], k) and s.dtype == torch.int64
    torch.testing.assert_close(v, ref_v, rtol=0, atol=0)
    R, w = scores.shape
    full = torch.full((R, lo + w + 1), -INF)  # every slot, and a last column for prev's empty entries
    if prev is not None:
        full.scatter_(1, torch.where(torch.isfinite(prev[0]), prev[1], lo + w), prev[0].float())
    live = torch.arange(w).view(1, w) < (limit if limit is not None else torch.full((R,), w)).view(R, 1)
    full[:, lo:lo + w] = scores.float().masked_fill(~live, -INF)
    fin = v != -INF  # +inf (an overflowed score) is a score; -inf is empty
    assert torch.equal(full.gather(1, s)[fin], v[fin])
    assert (s[~fin] == 0).all()
    for r in range(R):
        got = s[r][fin[r]].tolist()
        assert len(set(got)) == len(got), f"row {r}: a slot twice"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("w,k", [(5, 8), (40, 32), (300, 1), (3001, 16), (8193, 32), (40003, 64)])
def test_matches_reference_on_random_rows(path, dtype, w, k):
    fn = PATHS[path]()
    g = torch.Generator().manual_seed(w + k)
    R = 37
    scores = torch.randn(R, w, generator=g).to(dtype)
    scores[:, ::37] = -INF  # empty slots
    limit = torch.randint(0, w + 3, (R,), generator=g)
    limit[:3] = torch.tensor([0, w, min(k - 1, w)])
    check(fn(scores, k, 0, limit, None), scores, k, 0, limit, None)
    check(fn(scores, k, 0, None, None), scores, k, 0, None, None)
    v, s = fn(scores, k, 0, limit, None, sorted=False)  # any order: the same entries
    order = v.sort(-1, descending=True).indices
    check((v.gather(1, order), s.gather(1, order)), scores, k, 0, limit, None)


@pytest.mark.parametrize("path", PATHS)
def test_merges_an_earlier_blocks_best(path):
    """Blocks scanned one after another give the one top-k of the whole row, whether the carried best is full,
    partly empty (-inf) or wider than k."""
    fn = PATHS[path]()
    g = torch.Generator().manual_seed(1)
    R, n, k = 23, 9000, 24
    row = torch.randn(R, n, generator=g)
    for cut in (1000, 4096, 8999):
        best = fn(row[:, :cut], k, 0, None, None)
        check(fn(row[:, cut:], k, cut, None, best), row[:, cut:], k, cut, None, best)
        merged = fn(row[:, cut:], k, cut, None, best)
        assert torch.equal(merged[0], row.topk(k, -1).values)
        assert torch.equal(row.gather(1, merged[1]), merged[0])
    partial = fn(row[:, :10], k, 0, None, None)  # 10 finite, 14 empty
    assert (~torch.isfinite(partial[0][:, 10:])).all()
    check(fn(row[:, 10:], k, 10, None, partial), row[:, 10:], k, 10, None, partial)
    wide = fn(row[:, :500], 2 * k, 0, None, None)
    check(fn(row[:, 500:], k, 500, None, wide), row[:, 500:], k, 500, None, wide)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", ["ascending", "equal", "bf16_ties", "one_group", "descending", "huge"])
def test_rows_built_against_a_threshold(path, case):
    """Every score above the threshold (ascending rows: the buffer is cut again and again), all scores equal
    (ties up to k), bf16 rows with many equal scores, the top-k in one of the strided groups, and huge scores."""
    fn = PATHS[path]()
    g = torch.Generator().manual_seed(2)
    R, w, k = 9, 20000, 32
    scores = torch.randn(R, w, generator=g)
    if case == "ascending":
        scores = scores.sort(-1).values
    elif case == "descending":
        scores = scores.sort(-1, descending=True).values
    elif case == "equal":
        scores = torch.ones(R, w)
    elif case == "bf16_ties":
        scores = (scores * 4).round().bfloat16()
    elif case == "one_group":
        for groups in (64, 128):  # column j sits in group j % groups
            scores[:, 5::groups][:, :k] = 100 + torch.arange(k, dtype=torch.float)
    elif case == "huge":
        scores = scores * 3e38
        scores[:, 7] = torch.finfo(torch.float32).max
    check(fn(scores, k, 0, None, None), scores, k, 0, None, None)


def test_block_topk_by_group_maxima_is_exact():
    """The PyTorch path selects k groups of scores by their maxima, then the top-k among their members: the same
    values and positions as a plain top-k, also with -inf (empty slots) and ragged ends."""
    g = torch.Generator().manual_seed(4)
    for n, group in ((40, None), (8193, None), (20000, None), (40003, None), (3001, 3), (20000, 64)):
        scores = torch.randn(2, 3, 5, n, generator=g)
        scores[..., ::37] = -INF
        scores[0, 0, 0, -3:] = 10.0  # the top in the ragged end past the last whole group
        values, idx = block_topk(scores, 32, group)
        ref = scores.topk(min(32, n), -1)
        assert torch.equal(values, ref.values) and torch.equal(scores.gather(-1, idx), ref.values)
    # a row whose top-k all sit in one strided group: the k groups chosen must still hold them
    scores = torch.randn(1, 16384, generator=g)
    scores[0, 5::1024] = 100 + torch.arange(16, dtype=torch.float)
    values, idx = block_topk(scores, 32, 16)
    assert torch.equal(values, scores.topk(32, -1).values)


def test_the_op_takes_the_cpp_kernel_and_can_be_switched_off(monkeypatch):
    cpp()
    calls = []
    real = cpu_impl.topk_merge_cpu
    monkeypatch.setattr(cpu_impl, "topk_merge_cpu", lambda *a: calls.append(1) or real(*a))
    scores = torch.randn(4, 1000)
    want = scores.topk(8, -1).values
    assert torch.equal(topk_merge(scores, 8)[0], want) and len(calls) == 1
    assert torch.equal(topk_merge(scores.double(), 8)[0], want.double()) and len(calls) == 1  # float64: torch
    assert torch.equal(topk_merge(scores, 8, backend="reference")[0], want) and len(calls) == 1
    monkeypatch.setenv(cpu_build.ENV_VAR, "0")
    assert torch.equal(topk_merge(scores, 8)[0], want) and len(calls) == 1
    # switched off, the re-rank never asks for the kernel either
    monkeypatch.setattr(cpu_impl, "extension", lambda: pytest.fail("the C++ kernel was asked for"))
    q, keys = torch.randn(1, 3, 8), torch.randn(1, 50, 8)
    cand_s = torch.arange(12).repeat(3, 1)
    v, s = rerank_topk(q, keys, torch.zeros(3, 12), cand_s, 4)
    assert torch.equal(s, rerank_topk_reference(q, keys, torch.zeros(3, 12), cand_s, 4)[1])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="scores must be"):
        topk_merge(torch.randn(3), 2)
    with pytest.raises(ValueError, match="limit must be"):
        topk_merge(torch.randn(3, 9), 2, limit=torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match="backend="):
        topk_merge(torch.randn(3, 9), 2, backend="cuda")


@pytest.mark.parametrize("m,k", [(64, 32), (20, 32), (40, 8)])
@pytest.mark.parametrize("cand_dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rerank_matches_reference(m, k, cand_dtype):
    """The best k candidates by their float32 scores: C++ (one pass over each candidate key) and the reference
    (a gathered copy) agree, with empty candidates (-inf), rows with fewer candidates than k and rows of every
    group of keys."""
    cpp()
    g = torch.Generator().manual_seed(m + k)
    G, T, C, d = 3, 17, 500, 24
    q, keys = torch.randn(G, T, d, generator=g), torch.randn(G, C, d, generator=g)
    cand_s = torch.stack([torch.randperm(C, generator=g)[:m] for _ in range(G * T)])
    cand_v = torch.randn(G * T, m, generator=g).to(cand_dtype)
    cand_v[::5, m // 2:] = -INF
    cand_v[3] = -INF
    v, s = rerank_topk(q, keys, cand_v, cand_s, k)
    rv, rs = rerank_topk_reference(q, keys, cand_v, cand_s, k)
    torch.testing.assert_close(v, rv, rtol=1e-6, atol=1e-5)
    assert torch.equal(s, rs)
    exact = torch.einsum("gtd,gcd->gtc", q.double(), keys.double()).reshape(G * T, C)
    fin = v != -INF
    torch.testing.assert_close(exact.gather(1, s)[fin].float(), v[fin], rtol=1e-6, atol=1e-5)
    assert (s[3] == 0).all() and (v[3] == -INF).all()
    assert torch.equal(rerank_topk(q, keys, cand_v, cand_s, k, backend="reference")[1], rs)
