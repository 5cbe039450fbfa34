"""Vogels-Abbott CUBA and COBA fire at their references' rates, within stated tolerances.

References: the same networks (4,000 LIFs, 2 %, 0.1 ms synaptic delays: the shortest delay
of ours and of NEST, one step) simulated for 10 s by Brian2 2.9 (C++ standalone, exponential
Euler) and, for COBA, NEST 3.10 (`iaf_cond_exp`), each over several network realisations
(`benchmarks/bench_brainsim.py --only-coba`; figures in benchmarks/results/brainsim.json and
docs/brainsim.md). Statistics as `cluster.brainsim.report`: rates and CV ISI after a 0.1 s
transient. One realisation's rate varies a lot from network to network (COBA: s.d. ~1.2 Hz,
6 %; CUBA ~0.1 Hz, 2 %), so the test compares our mean over four realisations (10 s each,
fixed seeds) with the references' mean over theirs:

- CUBA: rate within 5 % of Brian2's (5.53 Hz E, 5.59 Hz I; 3 realisations), CV ISI within 5 %.
- COBA: rate within 6 % of the pooled Brian2 + NEST mean (19.46 Hz E, 19.31 Hz I; 13
  realisations: 8 Brian2, 5 NEST), CV ISI within 5 %.
- COBA with zero-delay synapses (Brian's example scripts; NEST has none): rate within 6 % of
  Brian2's mean (19.72 Hz E, 19.57 Hz I; 10 realisations), CV ISI within 5 %. Zero delays
  barely move the mean: Brian2 19.71 Hz with 0.1 ms over the same 10 seeds, ours 18.82
  against 18.79 Hz. 6 %, not 5 %: the references' own
  mean is uncertain by ~1.5 % (s.e.), ours over four realisations by ~1 %, and the
  references differ by 3.5 % between themselves (Brian2 19.71, NEST 19.05 Hz); ours over
  six realisations is 0.98 of NEST's and 0.95 of Brian2's (docs/brainsim.md).
Before this test the suite accepted +-50 % (CUBA) and +-35 % (COBA) over 1-3 s of one
realisation.
"""

import math

import numpy as np
import pytest

from cluster.brainsim import kernels
from cluster.brainsim.simulate import simulate
from cluster.brainsim.spec import NetworkSpec

SEEDS = (1, 2, 3, 4)
REFERENCE = {  # mean over realisations, 10 s, 0.1 ms delays (see the module docstring)
    "vogels_abbott_cuba": {"rate": {"E": 5.532, "I": 5.586}, "cv": {"E": 0.719, "I": 0.718}, "rate_tol": 0.05},
    "vogels_abbott_coba": {"rate": {"E": 19.46, "I": 19.31}, "cv": {"E": 1.767, "I": 1.763}, "rate_tol": 0.06},
    # Brian's example scripts: zero-delay synapses; Brian2 C++ standalone, 10 realisations
    "vogels_abbott_coba zero-delay": {"rate": {"E": 19.72, "I": 19.57}, "cv": {"E": 1.785, "I": 1.782},
                                      "rate_tol": 0.06, "options": {"delay_ms": 0.0}},
}


@pytest.mark.parametrize("case", sorted(REFERENCE))
def test_rates_match_the_references_over_realisations(case):
    ref = REFERENCE[case]
    model = case.split()[0]
    reps = [simulate(NetworkSpec(model=model, seed=s, options=ref.get("options", {})), 10.0) for s in SEEDS]
    for pop in ("E", "I"):
        rate = np.mean([r["populations"][pop]["rate_hz"] for r in reps])
        cv = np.mean([r["populations"][pop]["cv_isi"] for r in reps])
        assert abs(rate / ref["rate"][pop] - 1) <= ref["rate_tol"], (case, pop, rate, ref["rate"][pop])
        assert abs(cv / ref["cv"][pop] - 1) <= 0.05, (case, pop, cv, ref["cv"][pop])
        # every realisation is in the self-sustained asynchronous irregular state, not just the mean
        for r in reps:
            assert abs(r["populations"][pop]["rate_hz"] / ref["rate"][pop] - 1) <= 0.2


def test_coba_exp_matches_libm_everywhere():
    """The vectorised exp of the COBA kernel against math.exp over its whole clamped range."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-700, 700, 200_000), np.linspace(-1, 1, 20_001), -0.005 * rng.uniform(0, 300, 1000),
                        [0.0, -0.0, 1e-300, -1e-300, 709.0, -745.0, 700.0, -700.0]])
    out, scratch = np.empty_like(x), np.empty_like(x)
    kernels.exp_into(x, out, scratch)
    ref = np.array([math.exp(min(max(v, -700.0), 700.0)) for v in x])
    assert np.max(np.abs(out / ref - 1)) < 1e-15


def test_coba_kernel_matches_a_scalar_twin():
    """One COBA step on every kind of neuron (refractory, firing, at rest, negative g) against
    the scalar exponential-Euler formula with libm's exp."""
    rng = np.random.default_rng(3)
    n = 257  # not a multiple of any vector width
    v = rng.uniform(-70, -49.5, n)
    ge, gi = rng.normal(4, 1.5, n), rng.normal(20, 12, n)
    refr = rng.integers(0, 3, n) * (rng.random(n) < 0.3)
    bufe, bufi = rng.uniform(0, 1, n) * (rng.random(n) < 0.2), rng.uniform(0, 7, n) * (rng.random(n) < 0.1)
    fired = np.zeros(n, np.uint8)
    args = (0.98, 0.99, -60.0, -50.0, -60.0, 50, 0.0, -80.0, 0.005)
    want_v, want_r, want_f = v.copy(), refr.copy(), np.zeros(n, bool)
    want_ge, want_gi = ge * 0.98 + bufe, gi * 0.99 + bufi
    for i in range(n):
        if refr[i] > 0:
            want_r[i] -= 1
        else:
            g = 1 + ge[i] + gi[i]
            vinf = (-60.0 + ge[i] * 0.0 + gi[i] * -80.0) / g
            want_v[i] = vinf + (v[i] - vinf) * math.exp(-0.005 * g)
        if want_r[i] == 0 and want_v[i] >= -50.0:
            want_v[i], want_r[i], want_f[i] = -60.0, 50, True
    n_fired = kernels._lif_coba(v, ge, gi, refr, bufe, bufi, fired, *args)
    assert n_fired == want_f.sum() > 0
    assert np.array_equal(fired.astype(bool), want_f) and np.array_equal(refr, want_r)
    assert np.allclose(v, want_v, rtol=1e-13, atol=1e-12)
    assert np.allclose(ge, want_ge, rtol=1e-15) and np.allclose(gi, want_gi, rtol=1e-15)
    assert not bufe.any() and not bufi.any()
