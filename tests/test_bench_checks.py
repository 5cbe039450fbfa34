"""The benchmarks' own answer checks: they pass on the real peers and stop a run whose peer
(or ours) computes something else, before anything is timed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _bench(name):
    env = dict(os.environ)  # a bench script sets NUMBA_NUM_THREADS for itself
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(env)
    return module


def test_control_torch_port_is_checked_against_the_kernel():
    from operators.control.snn import SNNModel

    bench = _bench("bench_control")
    model = SNNModel.load()
    assert bench.check_torch_port(model, steps=200)["max_abs_diff"] < 1e-9
    real = bench.torch_step_fn
    bench.torch_step_fn = lambda m: (lambda x=0.3, xd=-0.1, step=real(m): 1.01 * step(x, xd))  # a port 1% off
    with pytest.raises(SystemExit, match="torch port and the kernel differ"):
        bench.check_torch_port(model, steps=200)


def test_eeg_filter_is_checked_against_mne_causal():
    import mne

    from operators.eeg import kernels as k
    from operators.eeg.synth import SynthSpec, synth_eeg

    bench = _bench("bench_eeg")
    rec = synth_eeg(SynthSpec(n_trials=2, seed=21))
    rate = rec.spec.rate_hz
    sos = k.design_sos(rate, (5.0, 45.0), 50.0)

    def causal(data):
        return mne.filter.filter_data(data, rate, 5.0, 45.0, method="iir", iir_params={"sos": sos},
                                      phase="forward", verbose=False)

    assert bench.check_filter(rec, causal)["max_abs_diff_uv"] < 1e-3

    def zero_phase(data):  # MNE's default: forward-backward, not what a streaming filter does
        return mne.filter.filter_data(data, rate, 5.0, 45.0, method="iir", iir_params={"sos": sos}, verbose=False)

    with pytest.raises(SystemExit, match="differ by up to"):
        bench.check_filter(rec, zero_phase)


def test_events_are_checked_against_tonic():
    import tonic.transforms as T

    bench = _bench("bench_events")
    ev = bench.make_events(bench.CHECK_EVENTS)
    kept = bench.check_answers(ev, T)
    assert set(kept) == {"background_filter", "refractory_filter"}

    class Shifted:  # tonic's ToFrame one window late: the check must refuse it
        ToVoxelGrid, ToTimesurface, Denoise, RefractoryPeriod = (T.ToVoxelGrid, T.ToTimesurface, T.Denoise,
                                                                  T.RefractoryPeriod)

        @staticmethod
        def ToFrame(**kw):
            frame = T.ToFrame(**kw)
            return lambda events: np.roll(frame(events), 1, axis=0)

    with pytest.raises(SystemExit, match="to_frames"):
        bench.check_answers(ev, Shifted)
