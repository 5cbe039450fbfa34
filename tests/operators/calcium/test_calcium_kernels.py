"""Each Numba kernel against its slow twin in naive_calcium.py."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
import naive_calcium as naive  # noqa: E402

from operators.calcium import kernels as k  # noqa: E402
from operators.calcium.deconv import deconvolve  # noqa: E402
from operators.calcium.synth import synthetic_traces  # noqa: E402


@pytest.mark.parametrize("dy,dx", [(0.0, 0.0), (1.3, -2.7), (-0.5, 0.25), (3.0, 1.0), (0.5, 20.0), (-13.5, -17.25)])
def test_shift_bilinear_matches_twin(dy, dx):
    rng = np.random.default_rng(0)
    f = rng.random((12, 15)).astype(np.float32)
    out = np.empty_like(f)
    k.shift_bilinear(f, dy, dx, out)
    np.testing.assert_allclose(out, naive.shift_bilinear(f, dy, dx), atol=1e-5)


def test_subpixel_peak_finds_a_gaussian_peak():
    h, w = 32, 32
    yy, xx = np.mgrid[0:h, 0:w]
    for cy, cx in [(2.3, -1.6), (-4.7, 3.2), (0.0, 0.4)]:
        # a circular Gaussian peak at (cy, cx)
        dy = (yy - cy + h / 2) % h - h / 2
        dx = (xx - cx + w / 2) % w - w / 2
        corr = np.exp(-(dy**2 + dx**2) / 2.0)
        got = k.subpixel_peak(corr, 8)
        assert abs(got[0] - cy) < 1e-6 and abs(got[1] - cx) < 1e-6


def test_roi_traces_match_twin():
    from operators.calcium.rois import annuli, trace_weights

    rng = np.random.default_rng(1)
    masks = rng.random((5, 20, 20)) < 0.05
    frames = rng.random((3, 20, 20)).astype(np.float32)
    pixels = [np.flatnonzero(m) for m in masks.reshape(5, -1)]
    rings = annuli(pixels, (20, 20), gap_px=1, width_px=2)
    idx, ptr, w = trace_weights(pixels, rings, 0.7)
    out = np.zeros((3, 5))
    k.roi_traces(frames.reshape(3, -1), idx, ptr, w, out)
    for i in range(3):
        np.testing.assert_allclose(out[i], naive.roi_traces(frames[i], pixels, rings, 0.7), rtol=1e-5, atol=1e-6)


def test_blend_is_a_running_mean_step():
    rng = np.random.default_rng(8)
    tpl, f = rng.random((2, 6, 7)).astype(np.float32)
    want = 0.9 * tpl + 0.1 * f
    np.testing.assert_allclose(k.blend(tpl, f, 0.1), want, rtol=1e-6)


def test_whitened_cross_matches_numpy():
    rng = np.random.default_rng(9)
    f, tc = (rng.standard_normal((2, 8, 5)) + 1j * rng.standard_normal((2, 8, 5))).astype(np.complex64)
    lp = rng.random((8, 5)).astype(np.float32)
    c = f * tc
    out = np.empty_like(f)
    np.testing.assert_allclose(k.whitened_cross(f, tc, lp, out), c / (np.abs(c) + 1e-9) * lp, rtol=1e-5)


def test_local_correlation_matches_twin():
    rng = np.random.default_rng(2)
    movie = rng.standard_normal((40, 6, 7)).astype(np.float32)
    movie[:, 2:4, 2:4] += 2 * rng.standard_normal((40, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(k.local_correlation(movie), naive.local_correlation(movie), atol=1e-4)


def test_window_percentile_matches_twin():
    rng = np.random.default_rng(3)
    ring = rng.random((50, 7))
    for filled in (1, 10, 50):
        out = np.zeros(7)
        k.window_percentile(ring, filled, 8.0, out)
        np.testing.assert_allclose(out, naive.window_percentile(ring, filled, 8.0))


def test_dff_block_matches_twin_in_any_chunking():
    rng = np.random.default_rng(10)
    data = 1 + rng.random((95, 4))
    want = naive.dff(data, window=20, q=8.0, update_every=3, min_f0=1e-3)
    for step in (1, 7, 95):
        ring, f0, out = np.zeros((20, 4)), np.zeros(4), np.zeros_like(data)
        pos = filled = count = 0
        for a in range(0, 95, step):
            pos, filled, count = k.dff_block(data[a : a + step], ring, pos, filled, count, f0, 8.0, 3, 1e-3, out[a : a + step])
        np.testing.assert_array_equal(out, want)


def test_window_affinity_matches_twin():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 8))
    x[:, 1] += x[:, 0]
    np.testing.assert_allclose(k.window_affinity(x, 1.5), naive.affinity(x, 1.5), atol=1e-9)


@pytest.mark.parametrize("smin", [0.0, 0.4])
def test_online_oasis_equals_offline_twin_with_long_lag(smin):
    y, _ = synthetic_traces(3, 400, sigma=0.3, seed=5)
    got = deconvolve(y, 0.95, 0.0, smin, lag=400, pools=400)
    for j in range(3):
        np.testing.assert_allclose(got[:, j], naive.oasis_ar1_offline(y[:, j], 0.95, smin), atol=1e-9)


def test_online_oasis_is_chunking_invariant():
    """Feeding the kernel row by row or in one block gives the same spikes."""
    from operators.calcium.deconv import OasisState

    y, _ = synthetic_traces(4, 300, sigma=0.3, seed=6)
    smin = np.full(4, 0.4)
    whole = np.zeros_like(y)
    st = OasisState(4, 32)
    k.oasis_ar1_block(y, 0.95, smin, 3, *st.arrays(), 0, whole)
    parts = np.zeros_like(y)
    st2 = OasisState(4, 32)
    a = 0
    for n in (1, 7, 50, 2, 240):
        k.oasis_ar1_block(np.ascontiguousarray(y[a : a + n]), 0.95, smin, 3, *st2.arrays(), a, parts[a : a + n])
        a += n
    np.testing.assert_array_equal(whole, parts)


def test_online_oasis_drops_the_oldest_pool_when_full():
    """With few pools and many spikes the kernel keeps hitting its pool limit; it must
    still equal the plain twin that drops the oldest pool each time."""
    from operators.calcium.deconv import OasisState

    y, _ = synthetic_traces(3, 500, spike_hz=3.0, sigma=0.1, seed=11)
    smin = np.full(3, 0.2)
    st = OasisState(3, 5)
    got = np.zeros_like(y)
    for a in range(0, 500, 37):  # in chunks: the head offset carries over
        k.oasis_ar1_block(np.ascontiguousarray(y[a : a + 37]), 0.95, smin, 2, *st.arrays(), a, got[a : a + 37])
    assert st.npool.max() == 5  # the limit was reached
    for j in range(3):
        np.testing.assert_allclose(got[:, j], naive.oasis_ar1_online(y[:, j], 0.95, 0.2, 2, 5), atol=1e-12)
