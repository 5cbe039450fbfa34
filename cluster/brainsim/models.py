"""Built-in networks with their parameters taken from the original papers.

- Vogels & Abbott (2005), J. Neurosci. 25:10786, in the form used as Benchmarks 1 (COBA)
  and 2 (CUBA) of Brette et al. (2007), J. Comput. Neurosci. 23:349, and by the Brian
  and NEST example scripts: 4,000 LIF neurons, 80 % excitatory, 2 % random connectivity.
- Brunel (2000), J. Comput. Neurosci. 8:183, model A: N_E = 10,000, N_I = 2,500, in-degree
  C_E = 1,000 (epsilon = 0.1), C_I = 250, J = 0.1 mV, J_I = -g J, delay D = 1.5 ms,
  theta = 20 mV, V_r = 10 mV, tau = 20 ms, tau_rp = 2 ms; each neuron gets C_E external
  Poisson inputs at nu_ext = eta * nu_thr with nu_thr = theta / (J C_E tau). The state is
  set by g and eta (Fig. 8): SR (g=3, eta=2), SI fast (g=6, eta=4), AI (g=5, eta=2),
  SI slow (g=4.5, eta=0.9).
- Potjans & Diesmann (2014), Cereb. Cortex 24:785: the cortical microcircuit (see below).

`scale` multiplies population sizes. For Brunel the in-degrees stay at the paper's
values (so the mean-field state, which depends on C_E, J, g and eta, is kept) unless
`indegree_e` is given; for Vogels & Abbott the connection probability stays 2 % (so the
in-degree scales, as in the Brian/NEST scaling runs) unless `p` is given.
"""

from __future__ import annotations

from cluster.brainsim.spec import Dist, External, Population, Projection

BRUNEL_STATES = {"SR": (3.0, 2.0), "SI_fast": (6.0, 4.0), "AI": (5.0, 2.0), "SI_slow": (4.5, 0.9)}


def brunel2000(scale: float, state: str = "AI", g: float | None = None, eta: float | None = None,
               indegree_e: int = 1000, j_mv: float = 0.1, delay_ms: float = 1.5):
    """Brunel (2000) sparsely connected excitatory-inhibitory network of delta-synapse LIFs."""
    if state not in BRUNEL_STATES:
        raise ValueError(f"brunel2000 state '{state}' is not one of {', '.join(BRUNEL_STATES)}")
    g0, eta0 = BRUNEL_STATES[state]
    g = g0 if g is None else g
    eta = eta0 if eta is None else eta
    n_e, n_i = max(1, round(10_000 * scale)), max(1, round(2_500 * scale))
    c_e, c_i = int(indegree_e), max(1, int(indegree_e) // 4)
    tau_ms, theta = 20.0, 20.0
    nu_thr_hz = theta / (j_mv * c_e * tau_ms * 1e-3)
    neuron = dict(model="lif_delta", tau_m_ms=tau_ms, v_rest_mv=0.0, v_thresh_mv=theta, v_reset_mv=10.0,
                  t_ref_ms=2.0, v_init_mv=(0.0, theta),
                  external=External(rate_hz=c_e * eta * nu_thr_hz, weight=j_mv))
    pops = [Population(name="E", size=n_e, **neuron), Population(name="I", size=n_i, **neuron)]
    projs = []
    for post in ("E", "I"):
        projs.append(Projection(pre="E", post=post, rule="fixed_indegree", indegree=c_e, weight=j_mv,
                                delay_ms=delay_ms, autapses=False))
        projs.append(Projection(pre="I", post=post, rule="fixed_indegree", indegree=c_i, weight=-g * j_mv,
                                delay_ms=delay_ms, autapses=False))
    return pops, projs


def _vogels_abbott(scale, model, w_e, w_i, p, delay_ms, e_l, init):
    n = max(2, round(4000 * scale))
    n_e = round(0.8 * n)
    neuron = dict(model=model, tau_m_ms=20.0, v_rest_mv=e_l, v_thresh_mv=-50.0, v_reset_mv=-60.0,
                  t_ref_ms=5.0, tau_syn_e_ms=5.0, tau_syn_i_ms=10.0, e_rev_e_mv=0.0, e_rev_i_mv=-80.0, **init)
    pops = [Population(name="E", size=n_e, **neuron), Population(name="I", size=n - n_e, **neuron)]
    projs = []
    for post in ("E", "I"):
        projs.append(Projection(pre="E", post=post, p=p, weight=w_e, delay_ms=delay_ms, receptor="exc"))
        projs.append(Projection(pre="I", post=post, p=p, weight=w_i, delay_ms=delay_ms, receptor="inh"))
    return pops, projs


def vogels_abbott_cuba(scale: float, p: float = 0.02, delay_ms: float = 0.1):
    """CUBA: E_l = -49 mV (above threshold: self-driven), w_e = 1.62 mV, w_i = -9 mV.

    Weights as in Brette et al. (2007) Benchmark 2: (60 * 0.27 / 10) mV and (-20 * 4.5 / 10) mV;
    tau_m 20 ms, tau_e 5 ms, tau_i 10 ms, V_t -50 mV, V_r -60 mV, refractory 5 ms; v starts
    uniform between V_r and V_t.
    """
    return _vogels_abbott(scale, "lif_cuba", 1.62, -9.0, p, delay_ms, -49.0, {"v_init_mv": (-60.0, -50.0)})


def vogels_abbott_coba(scale: float, p: float = 0.02, delay_ms: float = 0.1):
    """COBA: E_l = -60 mV, E_e = 0 mV, E_i = -80 mV, g_e = 6 nS, g_i = 67 nS over g_l = 10 nS.

    Started as in the Benchmark 1 scripts of Brette et al. (2007): v ~ N(-65, 5) mV,
    g_e ~ N(4, 1.5) g_l, g_i ~ N(20, 12) g_l. The normal tails matter: the few percent of
    neurons that start with g_i < 0 (or a large g_e) fire hard for the first milliseconds
    and ignite the self-sustained state; uniform ranges with the same mean and s.d. do not
    (the network falls silent within 50 ms, in Brian2 as here).
    """
    init = {"v_init_mv": Dist(dist="normal", mean=-65.0, std=5.0),
            "g_e_init": Dist(dist="normal", mean=4.0, std=1.5),
            "g_i_init": Dist(dist="normal", mean=20.0, std=12.0)}
    return _vogels_abbott(scale, "lif_coba", 0.6, 6.7, p, delay_ms, -60.0, init)


# Potjans & Diesmann (2014), Cereb. Cortex 24:785, Table 5 and the NEST reference
# implementation: population sizes, connection probabilities [target][source] and
# external in-degrees of L2/3, L4, L5, L6 (E, I).
PD_NAMES = ("L23E", "L23I", "L4E", "L4I", "L5E", "L5I", "L6E", "L6I")
PD_SIZES = (20683, 5834, 21915, 5479, 4850, 1065, 14395, 2948)
PD_PROB = (
    (0.1009, 0.1689, 0.0437, 0.0818, 0.0323, 0.0, 0.0076, 0.0),
    (0.1346, 0.1371, 0.0316, 0.0515, 0.0755, 0.0, 0.0042, 0.0),
    (0.0077, 0.0059, 0.0497, 0.1350, 0.0067, 0.0003, 0.0453, 0.0),
    (0.0691, 0.0029, 0.0794, 0.1597, 0.0033, 0.0, 0.1057, 0.0),
    (0.1004, 0.0622, 0.0505, 0.0057, 0.0831, 0.3726, 0.0204, 0.0),
    (0.0548, 0.0269, 0.0257, 0.0022, 0.0600, 0.3158, 0.0086, 0.0),
    (0.0156, 0.0066, 0.0211, 0.0166, 0.0572, 0.0197, 0.0396, 0.2252),
    (0.0364, 0.0010, 0.0034, 0.0005, 0.0277, 0.0080, 0.0658, 0.1443),
)
PD_K_EXT = (1600, 1500, 2100, 1900, 2000, 1900, 2900, 2100)


def potjans_diesmann_2014(scale: float, bg_rate_hz: float = 8.0, g: float = -4.0, psc_mv: float = 3.512):
    """Potjans & Diesmann (2014) cortical microcircuit, current-based exponential synapses.

    Neurons: C 250 pF, tau_m 10 ms, tau_syn 0.5 ms, E_L = V_reset = -65 mV, V_th -50 mV,
    t_ref 2 ms. Synapses: PSC 87.8 pA (0.15 mV PSP) = 3.512 mV in units of R = tau_m / C,
    10 % relative s.d., inhibitory x g = -4, L4E -> L2/3E doubled; delays 1.5 +- 0.75 ms
    (E) and 0.8 +- 0.4 ms (I). Poisson background at 8 Hz per external synapse. In-degrees
    are the full model's (total synapses log(1-p)/log(1-1/(N_pre N_post)) over N_post),
    kept when `scale` shrinks the populations.
    """
    import math

    sizes = [max(1, round(n * scale)) for n in PD_SIZES]
    pops = [Population(name=name, size=n, model="lif_cuba", tau_m_ms=10.0, v_rest_mv=-65.0, v_reset_mv=-65.0,
                       v_thresh_mv=-50.0, t_ref_ms=2.0, tau_syn_e_ms=0.5, tau_syn_i_ms=0.5,
                       v_init_mv=(-65.0, -50.0),
                       external=External(rate_hz=k_ext * bg_rate_hz, weight=psc_mv))
            for name, n, k_ext in zip(PD_NAMES, sizes, PD_K_EXT, strict=True)]
    projs = []
    for t, target in enumerate(PD_NAMES):
        for s, source in enumerate(PD_NAMES):
            p = PD_PROB[t][s]
            if p <= 0:
                continue
            n_pre, n_post = PD_SIZES[s], PD_SIZES[t]
            total = math.log(1 - p) / math.log(1 - 1 / (n_pre * n_post))
            indegree = max(1, round(total / n_post))
            w = psc_mv * (g if source.endswith("I") else 2.0 if (source, target) == ("L4E", "L23E") else 1.0)
            delay = Dist(dist="normal", mean=0.8, std=0.4) if source.endswith("I") else \
                Dist(dist="normal", mean=1.5, std=0.75)
            projs.append(Projection(pre=source, post=target, rule="fixed_indegree", indegree=indegree,
                                    weight=Dist(dist="normal", mean=w, std=abs(w) * 0.1), delay_ms=delay))
    return pops, projs


BUILTINS = {"brunel2000": brunel2000, "potjans_diesmann_2014": potjans_diesmann_2014, "vogels_abbott_cuba": vogels_abbott_cuba,
            "vogels_abbott_coba": vogels_abbott_coba}
