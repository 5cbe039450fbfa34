"""Kernels: chunking-invariant streaming filters, channel checks, decoders, metrics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from operators.eeg import kernels as k
from operators.eeg.decode import Decoder, window_flags
from operators.eeg.ops import EegFilter
from pipeline import schemas as sch

RATE = 250.0


def _signal(n=600, c=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 10, (n, c))
    x[100:180, 1] = 5.0  # a flat stretch
    x[300:310, 2] = 4000.0  # saturated
    return x


def _run_filter(x, cuts):
    op = EegFilter()
    schema = sch.samples_schema([f"c{i}" for i in range(x.shape[1])], RATE)
    t = np.arange(len(x)) * 4000
    out = []
    for a, b in zip([0, *cuts], [*cuts, len(x)]):
        if b > a:
            y = op.process("in", sch.samples_batch(t[a:b], x[a:b], schema))
            out.append(np.column_stack([sch.column(y, f"c{i}") for i in range(x.shape[1])]))
    return np.concatenate(out), op


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 599), max_size=12).map(lambda v: sorted(set(v))))
def test_filter_operator_is_chunking_invariant(cuts):
    x = _signal()
    whole, _ = _run_filter(x, [])
    pieces, _ = _run_filter(x, cuts)
    np.testing.assert_allclose(pieces, whole, rtol=0, atol=1e-4)


def test_sos_step_matches_scipy_on_whole_signal():
    x = _signal()
    sos = k.design_sos(RATE, (5.0, 45.0), 50.0)
    y1, zi = k.sos_step(sos, x[:250], k.sos_zeros(sos, 4))
    y2, _ = k.sos_step(sos, x[250:], zi)
    np.testing.assert_allclose(np.concatenate([y1, y2]), signal.sosfilt(sos, x, axis=0), atol=1e-9)


def test_notch_removes_mains():
    t = np.arange(2000) / RATE
    x = np.sin(2 * np.pi * 50 * t)[:, None]
    sos = k.design_sos(RATE, None, 50.0)
    y, _ = k.sos_step(sos, x, k.sos_zeros(sos, 1))
    assert np.abs(y[1000:]).max() < 0.05


@pytest.mark.parametrize("cut", [1, 57, 300])
def test_bad_samples_matches_naive_twin_across_chunks(cut):
    x = _signal()
    last, run = np.full(4, np.nan), np.zeros(4, dtype=np.int64)
    b1, l1, r1 = k.bad_samples(x[:cut], last, run, 50, 3000.0)
    b2, _, _ = k.bad_samples(x[cut:], l1, r1, 50, 3000.0)
    nb, _, _ = k.bad_samples_naive(x, last, run, 50, 3000.0)
    np.testing.assert_array_equal(np.concatenate([b1, b2]), nb)
    assert nb[149:180, 1].all() and not nb[100:148, 1].any()  # flat after 50 samples
    assert nb[300:310, 2].all()


def test_filter_zeroes_bad_channels_and_counts_them():
    y, op = _run_filter(_signal(), [])
    assert (y[300:310, 2] == 0).all() and (y[150:180, 1] == 0).all()
    assert op.result()["bad_channel_samples"] > 0
    good = np.ones(4, bool)
    good[2] = False
    np.testing.assert_allclose(y[305, good].sum(), 0.0, atol=1e-3)  # CAR over good channels


def _ssvep(freq, n=500, c=6, amp=2.0, noise=2.0, seed=1):
    rng = np.random.default_rng(seed)
    t = np.arange(n) / RATE
    wave = np.sin(2 * np.pi * freq * t + 0.3) + 0.5 * np.sin(2 * np.pi * 2 * freq * t)
    return amp * wave[:, None] + rng.normal(0, noise, (n, c))


@pytest.mark.parametrize("method", ["cca", "fbcca", "fft"])
@pytest.mark.parametrize("target", [0, 1, 2, 3])
def test_decoders_find_the_attended_frequency(method, target):
    freqs = (6.67, 7.5, 8.57, 12.0)
    dec = Decoder(method, freqs, RATE, 500)
    got, conf, scores = dec.decide(_ssvep(freqs[target]))
    assert got == target and scores.shape == (4,)


@pytest.mark.parametrize("method", ["cca", "fbcca", "fft"])
def test_idle_detector_withholds_on_noise(method):
    freqs = (6.67, 7.5, 8.57, 12.0)
    signal_conf = Decoder(method, freqs, RATE, 500).decide(_ssvep(freqs[1]))[1]
    noise_conf = Decoder(method, freqs, RATE, 500).decide(_ssvep(7.5, amp=0.0))[1]
    assert signal_conf > noise_conf
    dec = Decoder(method, freqs, RATE, 500, idle_threshold=(signal_conf + noise_conf) / 2)
    assert dec.decide(_ssvep(7.5, amp=0.0))[0] == -1


def test_cca_matches_textbook_definition():
    x = _ssvep(8.57)
    y = k.references([8.57], RATE, 500, 2)[0]
    xc, yc = x - x.mean(0), y - y.mean(0)
    sxx, syy, sxy = xc.T @ xc, yc.T @ yc, xc.T @ yc
    m = np.linalg.solve(sxx, sxy) @ np.linalg.solve(syy, sxy.T)
    rho = np.sqrt(np.max(np.linalg.eigvals(m).real))
    assert k.cca_scores(x, [k.orthobasis(y)])[0] == pytest.approx(rho, rel=1e-6)


def test_window_flags():
    w = np.random.default_rng(0).normal(0, 5, (500, 4))
    assert window_flags(w, 60.0, 2)[0] == 0
    w[10, 0] = 100.0
    assert window_flags(w, 60.0, 2)[0] & 1
    w[:, 1:] = 0.0
    flags, usable = window_flags(w, 60.0, 2)
    assert flags & 8 and flags & 2 and usable.tolist() == [True, False, False, False]


def test_wolpaw_itr_and_nmcc():
    assert k.wolpaw_bits(1.0, 4) == pytest.approx(2.0)
    assert k.wolpaw_bits(0.25, 4) == 0.0
    assert k.wolpaw_bits(0.9, 4) == pytest.approx(2 + 0.9 * np.log2(0.9) + 0.1 * np.log2(0.1 / 3))
    assert k.itr_bits_per_min(1.0, 4, 2.0) == pytest.approx(60.0)
    true = np.array([0, 1, 2, -1, 0, 1])
    assert k.nmcc(true, true) == pytest.approx(1.0)
    # binary case against the two-class MCC formula
    a, b = np.array([1, 1, 0, 0, 1, 0, 1, 1]), np.array([1, 0, 0, 1, 1, 0, 1, 0])
    tp, tn = ((a == 1) & (b == 1)).sum(), ((a == 0) & (b == 0)).sum()
    fp, fn = ((a == 0) & (b == 1)).sum(), ((a == 1) & (b == 0)).sum()
    ref = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert k.mcc(a, b) == pytest.approx(ref)
    assert k.nmcc(a, 1 - a) == pytest.approx(0.0)
