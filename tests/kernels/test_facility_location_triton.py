"""The Triton kernels (method="triton") against the PyTorch reference (method="naive") on the
same float32 input: compiled on a CUDA device where there is one, and in Triton's CPU
interpreter elsewhere (``TRITON_INTERPRET=1``, set by ``tests/conftest.py`` before Triton is
imported), so on every machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from coreset_sampler.kernels import greedy_facility_location
from coreset_sampler.kernels.facility_location import _triton

from . import _compile_triton
from ._reference import SIMILARITIES, rng_features

pytest.importorskip("triton")

CUDA = torch.cuda.is_available()


@pytest.fixture
def device() -> str:
    """Where the kernels run: the GPU, or the CPU in Triton's interpreter."""
    if CUDA:
        return "cuda"
    if not _triton.interpreting():
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1 (see tests/conftest.py)")
    return "cpu"


@pytest.fixture
def tiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiled kernels from 17 points on (fused up to 16), so that small problems, quick in
    the interpreter, take the path of the large ones."""
    monkeypatch.setattr(_triton, "FUSED_MAX_N", 16)
    monkeypatch.setattr(_triton, "_TILE", 16)
    monkeypatch.setattr(_triton, "_CHUNK", 16)


def same_as_naive(x: torch.Tensor, k: Any, *, device: str = "cpu", **kw: Any) -> None:
    """Triton's picks, weights, gains and objective equal the naive PyTorch greedy's on the
    same float32 input (gains and objective to float32 rounding: their sums are ordered
    differently)."""
    if x.dtype == torch.float64:
        x = x.float()
    ref = greedy_facility_location(x, k, method="naive", **kw)
    moved = {key: v.to(device) if isinstance(v, torch.Tensor) else v for key, v in kw.items()}
    k_dev = k.to(device) if isinstance(k, torch.Tensor) else k
    out = greedy_facility_location(x.to(device), k_dev, method="triton", **moved)
    assert out.indices.dtype == torch.int64 and out.weights.dtype == torch.float32
    assert out.indices.shape == ref.indices.shape and out.objective.shape == ref.objective.shape
    assert torch.equal(out.indices.cpu(), ref.indices)
    torch.testing.assert_close(out.weights.cpu(), ref.weights, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.gains.cpu(), ref.gains, rtol=2e-5, atol=1e-5)
    torch.testing.assert_close(out.objective.cpu(), ref.objective, rtol=2e-5, atol=1e-5)


def ragged(
    seed: int, batch: int, n: int, d: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features, a mask with one short problem and one with gaps, and ragged budgets with one
    k equal to its problem's valid points."""
    x = rng_features(seed, batch, n, d)
    mask = torch.ones(batch, n, dtype=torch.bool)
    mask[1, n // 2 :] = False
    mask[2, ::3] = False
    k = torch.tensor([5, 3, int(mask[2].sum())] + [4] * (batch - 3))
    return x, mask, k


# ---------------------------------------------------------------------- fused kernel


@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("ties", ["lowest", "share"])
def test_fused_equals_naive(device: str, similarity: str, ties: str) -> None:
    x, mask, k = ragged(0, 4, 30, 6)
    same_as_naive(x, k, mask=mask, similarity=similarity, ties=ties, device=device)


def test_fused_crest_selection(device: str) -> None:
    # CREST's call: 50 problems of 50 points, 13 picks, 10 features
    x = rng_features(1, 50, 50, 10)
    same_as_naive(x, 13, ties="share", device=device)


@pytest.mark.parametrize("ties", ["lowest", "share"])
def test_duplicates_tie_to_the_lowest_index_or_share(device: str, ties: str) -> None:
    base = rng_features(2, 1, 6, 3)[0]
    x = torch.cat([base, base, base[:2]])[None]  # every point twice or three times
    same_as_naive(x, 5, ties=ties, device=device)
    if ties == "share":  # a pick's duplicates split between it and its twin picked later
        out = greedy_facility_location(x.float().to(device), 14, method="triton", ties=ties)
        assert out.weights.sum().item() == pytest.approx(14.0)


def test_one_point_and_half_precision(device: str) -> None:
    same_as_naive(rng_features(3, 3, 1, 4), 1, device=device)
    same_as_naive(rng_features(4, 2, 20, 5).half(), 4, device=device)  # (in float32)


def test_k_equals_n_and_the_largest_fused_size(device: str) -> None:
    same_as_naive(rng_features(5, 2, 12, 3), 12, device=device)
    same_as_naive(rng_features(6, 1, _triton.FUSED_MAX_N, 4), 6, device=device)


# ---------------------------------------------------------------------- tiled kernels


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_tiled_equals_naive(device: str, tiled: None, similarity: str) -> None:
    x, mask, k = ragged(7, 3, 40, 5)
    k[2] = 6  # (k = n is the next test's: each step is slow in the interpreter)
    same_as_naive(x, k, mask=mask, similarity=similarity, device=device)


def test_tiled_ties_share_and_k_equals_n(device: str, tiled: None) -> None:
    x = rng_features(8, 2, 20, 3)
    x[0, 10:] = x[0, :10]  # duplicates
    same_as_naive(x, 20, ties="share", device=device)


@pytest.mark.parametrize("path", ["fused", "tiled"])
def test_near_ties_go_to_the_lowest_index(
    device: str, path: str, request: pytest.FixtureRequest
) -> None:
    if path == "tiled":
        request.getfixturevalue("tiled")
    # dot similarity on positive scalars: gain_j = x_j · Σ_i x_i, so point 1 beats point 0 by a
    # relative 2**-22, inside the tie tolerance (16 float32 eps / sqrt(n)): point 0 is picked
    x = torch.linspace(0.1, 0.5, 20)[:, None]
    x[0], x[1] = 1.0, 1.0 + 2.0**-22
    out = greedy_facility_location(x.to(device), 1, similarity="dot", method="triton")
    assert out.indices.tolist() == [0]
    same_as_naive(x[None], 3, similarity="dot", device=device)


@pytest.mark.parametrize("path", ["fused", "tiled"])
def test_a_transposed_mask_and_strided_budgets(
    device: str, path: str, request: pytest.FixtureRequest
) -> None:
    # the kernels read the mask and k as contiguous rows: views with other strides are copied
    if path == "tiled":
        request.getfixturevalue("tiled")
    x, mask, k = ragged(13, 3, 24, 4)
    mask_t = mask.t().contiguous().t()  # same values, column-major
    k_strided = torch.stack([k, k], 1).reshape(-1)[::2]  # same values, stride 2
    assert mask_t.stride() != mask.stride() and k_strided.stride() == (2,)
    same_as_naive(x, k_strided, mask=mask_t, device=device)


# ---------------------------------------------------------------------- compiled for a GPU


def test_kernels_compile_for_a_gpu(tmp_path: Any) -> None:
    """Every kernel and variant compiles to a cubin for an H100 with Triton's own ptxas (no GPU
    needed): the code generation that the interpreter skips. In a fresh process, since Triton
    imported in interpreter mode (as here) cannot compile."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # compiled here, not found in a cache
    script = Path(__file__).with_name("_compile_triton.py")
    run = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    if run.returncode == 3:
        pytest.skip(run.stdout.strip())
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert run.stdout.count(" ok ") == _compile_triton.COUNT, run.stdout


# ---------------------------------------------------------------------- dispatch and errors


def test_errors_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    x = rng_features(9, 2, 10, 3).float()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match=r"runs on CUDA tensors.*TRITON_INTERPRET=1"):
        greedy_facility_location(x, 3, method="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="computes in float32"):
        greedy_facility_location(x.double(), 3, method="triton")
    with pytest.raises(ValueError, match="not a precomputed"):
        greedy_facility_location(None, 3, similarity=torch.rand(10, 10), method="triton")
    with pytest.raises(ValueError, match="no chunk_size"):
        greedy_facility_location(x, 3, method="triton", chunk_size=4)
    bad = x.clone()
    bad[1, 4, 0] = float("nan")
    with pytest.raises(ValueError, match="problem 1"):
        greedy_facility_location(bad, 3, method="triton")
    monkeypatch.setattr(_triton, "_triton", lambda: None)
    with pytest.raises(ImportError, match="pip install triton"):
        greedy_facility_location(x, 3, method="triton")


def test_auto_chooses_triton_only_for_cuda_float32_features(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from coreset_sampler.kernels.facility_location import _problem

    x = rng_features(10, 2, 10, 3).float()
    cpu = _problem.describe(x, 3, None, "neg_distance", 0.1, None)
    assert not _triton.fits(cpu)
    cuda = cpu._replace(device=torch.device("cuda"))
    assert _triton.fits(cuda)
    assert not _triton.fits(cuda._replace(dtype=torch.float64))
    assert not _triton.fits(cuda._replace(chunk_size=8))
    assert not _triton.fits(cuda._replace(features=None))
    assert not _triton.fits(cuda._replace(n=_triton.FUSED_MAX_N + 1))  # (the tiled kernels)
    monkeypatch.setattr(_triton, "_triton", lambda: None)
    assert not _triton.fits(cuda)


# ---------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_cuda_kernels_equal_naive(similarity: str) -> None:
    x, mask, k = ragged(11, 6, 100, 10)
    same_as_naive(x, k, device="cuda", mask=mask, similarity=similarity)
    out = greedy_facility_location(x.cuda(), 5, similarity=similarity)  # auto chose triton
    ref = greedy_facility_location(x.cuda(), 5, similarity=similarity, method="triton")
    assert torch.equal(out.indices, ref.indices)
    x, mask, k = ragged(12, 4, 700, 10)  # the tiled kernels
    same_as_naive(x, k, device="cuda", mask=mask, similarity=similarity)


@pytest.mark.slow
def test_gpu_benchmark_script_smoke(tmp_path: Path) -> None:
    """benchmarks/bench_triton.py --quick runs (in the interpreter here) and writes its table."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_triton.py"
    out = tmp_path / "bench.json"
    env = {**os.environ}
    if not CUDA:
        env["TRITON_INTERPRET"] = "1"
    run = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "| facility location | quick-4x20-k5 (naive) |" in run.stdout
    assert "| k-center | quick-4x20-k5 (k-center torch) |" in run.stdout
    results = json.loads(out.read_text())["results"]
    assert {"triton", "eager"} <= set(results[0]["seconds"])
