"""Numba kernels of the spiking network engine: random streams, connectivity, neuron updates.

Everything here takes and returns NumPy arrays and knows nothing of Arrow, Ray or configs.

Determinism across partitionings: every random number is drawn from a stream keyed by a
*global* index (neuron or post-synaptic neuron and projection), never from a per-process
generator, so splitting the neurons over 1, 2 or 4 partitions draws the same numbers.
Synapses are stored by their pre-synaptic neuron (CSR) on the partition that owns the
post-synaptic neuron, in (projection, post, draw) order, so the floating-point sums into
each neuron's ring buffer happen in the same order whatever the partitioning.

Synapse storage: `tgt` uint32 (local post index), `w` float32, `dch` uint8 (delay in
steps in bits 0-6, receptor channel in bit 7): 9 bytes per synapse plus the row pointers.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)

# population model codes
LIF_CUBA, LIF_COBA, LIF_DELTA, POISSON, SPIKE_SOURCE, LIF_ALPHA = 0, 1, 2, 3, 4, 5
# projection rule codes
FIXED_PROB, FIXED_INDEGREE, ONE_TO_ONE, EXPLICIT = 0, 1, 2, 3
# distribution codes
CONST, NORMAL, UNIFORM = 0, 1, 2

# population table columns (float64)
P_MODEL, P_LO, P_N, P_P22, P_P21E, P_P21I, P_DECE, P_DECI, P_VREST, P_VTH, P_VRESET, P_REF = range(12)
P_EXTLAM, P_EXTW, P_EXTCH, P_EE, P_EI, P_TAUM, P_DT, P_RATEP, P_V0LO, P_V0HI = range(12, 22)
P_GE0LO, P_GE0HI, P_GI0LO, P_GI0HI = range(22, 26)
P_V0D, P_GE0D, P_GI0D = range(26, 29)  # distribution codes of the initial values (LO, HI: low, high or mean, std)
# alpha-current LIF (NEST's iaf_psc_alpha): dI -> V and I -> V propagators per channel, the
# constant drive I_e, and e / tau_syn (an incoming weight in pA starts dI so that I peaks at w)
P_P31E, P_P32E, P_P31I, P_P32I, P_IE, P_PSCE, P_PSCI = range(29, 36)
POP_COLS = 36

# projection table columns (float64)
(J_PRELO, J_PREN, J_POSTLO, J_POSTN, J_RULE, J_RP, J_WD, J_WA, J_WB, J_DD, J_DA, J_DB, J_CH,
 J_AUTAPSES, J_SEED, J_EXLO, J_EXN) = range(17)
PROJ_COLS = 17  # J_EXLO, J_EXN: an explicit projection's edges in the edge table, sorted by post

DELAY_MASK = np.uint8(0x7F)


@njit(cache=True, nogil=True)
def mix64(z):
    """SplitMix64 finaliser: a well-mixed 64-bit word from any 64-bit word."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def stream_seed(seed, salt, index):
    """Seed of the random stream for (run seed, purpose salt, global index)."""
    z = mix64(np.uint64(seed) * GOLDEN + np.uint64(salt))
    return mix64(z ^ (np.uint64(index) * np.uint64(0xD1B54A32D192ED03)))


@njit(cache=True, nogil=True)
def next_uniform(state, i):
    """Advance stream `state[i]` (SplitMix64) and return a double in [0, 1)."""
    s = state[i] + GOLDEN
    state[i] = s
    return float(mix64(s) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, nogil=True)
def poisson_draw(state, i, lam):
    """A Poisson(lam) count by inversion (lam is small: a rate times one step)."""
    if lam <= 0.0:
        return 0
    u = next_uniform(state, i)
    p = math.exp(-lam)
    s = p
    k = 0
    while u > s and k < 1000:
        k += 1
        p *= lam / k
        s += p
    return k


@njit(cache=True, nogil=True)
def normal_draw(state, i):
    """A standard normal by Box-Muller (one of the pair; streams stay simple)."""
    u1 = next_uniform(state, i)
    u2 = next_uniform(state, i)
    return math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)


@njit(cache=True, nogil=True)
def _draw(state, code, a, b):
    if code == CONST:
        return a
    if code == NORMAL:
        return a + b * normal_draw(state, 0)
    return a + (b - a) * next_uniform(state, 0)


@njit(cache=True, nogil=True)
def _synapses_of(proj, post, seed, pres, ws, ds, dt, d_base, edges):
    """Draw the incoming synapses of global neuron `post` for one projection row.

    Returns how many were written to `pres`, `ws`, `ds` (sized for the worst case).
    """
    rule = int(proj[J_RULE])
    pre_lo = int(proj[J_PRELO])
    pre_n = int(proj[J_PREN])
    post_local = post - int(proj[J_POSTLO])
    state = np.empty(1, np.uint64)
    state[0] = stream_seed(seed, int(proj[J_SEED]), post)
    autapses = proj[J_AUTAPSES] > 0.5
    count = 0
    if rule == EXPLICIT:  # edges[0..3]: pre (global), post (global), weight, delay (ms); sorted by post
        e_lo = int(proj[J_EXLO])
        posts = edges[1, e_lo:e_lo + int(proj[J_EXN])]
        a = np.searchsorted(posts, post, side="left")
        b = np.searchsorted(posts, post, side="right")
        for e in range(a, b):
            pres[count] = int(edges[0, e_lo + e])
            ws[count] = edges[2, e_lo + e]
            d = edges[3, e_lo + e]
            steps = 0 if d == 0.0 else max(1, int(round(d / dt)))  # only an exact 0 is a zero delay
            ds[count] = max(d_base, min(d_base + 127, steps)) - d_base
            count += 1
        return count
    if rule == ONE_TO_ONE:
        if post_local < pre_n:
            pres[0] = pre_lo + post_local
            count = 1
    elif rule == FIXED_INDEGREE:
        k = int(proj[J_RP])
        while count < k:
            j = pre_lo + int(next_uniform(state, 0) * pre_n)
            if not autapses and j == post:
                continue
            pres[count] = j
            count += 1
    else:
        p = proj[J_RP]
        if p >= 1.0:
            for j in range(pre_n):
                if autapses or pre_lo + j != post:
                    pres[count] = pre_lo + j
                    count += 1
        elif p > 0.0:
            log1mp = math.log(1.0 - p)
            j = -1
            while True:
                j += 1 + int(math.log(1.0 - next_uniform(state, 0)) / log1mp)
                if j >= pre_n:
                    break
                if autapses or pre_lo + j != post:
                    pres[count] = pre_lo + j
                    count += 1
    sign_w = 1.0 if proj[J_WA] >= 0.0 else -1.0
    zero = int(proj[J_DD]) == CONST and proj[J_DA] == 0.0
    for c in range(count):
        w = _draw(state, int(proj[J_WD]), proj[J_WA], proj[J_WB])
        if w * sign_w < 0.0:  # a distributed weight never changes sign
            w = 0.0
        ws[c] = w
        d = _draw(state, int(proj[J_DD]), proj[J_DA], proj[J_DB])
        steps = 0 if zero else max(1, int(round(d / dt)))  # a drawn delay is never below one step
        ds[c] = max(d_base, min(d_base + 127, steps)) - d_base
    return count


@njit(cache=True, nogil=True)
def build_csr(projs, lo, hi, n_global, seed, dt, max_row, d_base, edges):
    """Incoming synapses of neurons [lo, hi) as CSR rows keyed by global pre index.

    A synapse's delay is stored as steps beyond `d_base` (the network's shortest delay,
    at least 1 step), 0 to 127.

    Two passes over the same random streams (count, then fill: a stable counting sort),
    so no temporary arrays of synapse size are needed.
    """
    indptr = np.zeros(n_global + 1, np.int64)
    pres = np.empty(max_row, np.int64)
    ws = np.empty(max_row, np.float64)
    ds = np.empty(max_row, np.int64)
    for r in range(projs.shape[0]):
        p_lo = int(projs[r, J_POSTLO])
        p_hi = p_lo + int(projs[r, J_POSTN])
        for post in range(max(lo, p_lo), min(hi, p_hi)):
            c = _synapses_of(projs[r], post, seed, pres, ws, ds, dt, d_base, edges)
            for s in range(c):
                indptr[pres[s] + 1] += 1
    for j in range(n_global):
        indptr[j + 1] += indptr[j]
    total = indptr[n_global]
    tgt = np.empty(total, np.uint32)
    w = np.empty(total, np.float32)
    dch = np.empty(total, np.uint8)
    fill = indptr[:-1].copy()
    for r in range(projs.shape[0]):
        p_lo = int(projs[r, J_POSTLO])
        p_hi = p_lo + int(projs[r, J_POSTN])
        ch = np.uint8(128) if projs[r, J_CH] > 0.5 else np.uint8(0)
        for post in range(max(lo, p_lo), min(hi, p_hi)):
            c = _synapses_of(projs[r], post, seed, pres, ws, ds, dt, d_base, edges)
            for s in range(c):
                k = fill[pres[s]]
                tgt[k] = post - lo
                w[k] = ws[s]
                dch[k] = np.uint8(ds[s]) | ch
                fill[pres[s]] = k + 1
    return indptr, tgt, w, dch


@njit(cache=True, nogil=True)
def _initial(rng, i, code, a, b):
    """An initial value: uniform in [a, b) (one draw) or normal with mean a, s.d. b (two)."""
    if code == NORMAL:
        return a + b * normal_draw(rng, i)
    return a + (b - a) * next_uniform(rng, i)


@njit(cache=True, nogil=True)
def init_neurons(pops, pidx, lo, seed, v, ge, gi, rng):
    """Initial v, g_e, g_i (each uniform or normal) and the per-neuron random streams."""
    for i in range(v.shape[0]):
        g = lo + i
        rng[i] = stream_seed(seed, 1, g)
        row = pops[pidx[i]]
        v[i] = _initial(rng, i, int(row[P_V0D]), row[P_V0LO], row[P_V0HI])
        ge[i] = _initial(rng, i, int(row[P_GE0D]), row[P_GE0LO], row[P_GE0HI])
        gi[i] = _initial(rng, i, int(row[P_GI0D]), row[P_GI0LO], row[P_GI0HI])


@njit(cache=True, nogil=True)
def deliver(steps, neurons, indptr, tgt, w, dch, buf, d_base, ge, gi):
    """Add each spike's weights into the ring-buffer slot of its arrival step.

    `steps`, `neurons`: the spikes of one window, sorted by (step, global neuron).
    `buf[slot, channel, local neuron]`, slot = arrival step modulo the ring length; a
    synapse's delay is `d_base` plus its stored steps. A zero delay (`d_base` 0, stored 0;
    the window is then one step) goes straight into the target's synaptic state `ge`/`gi`
    before the next step, as Brian2's zero-delay `on_pre` does after the step's threshold.
    """
    ring = buf.shape[0]
    for s in range(steps.shape[0]):
        j = neurons[s]
        base = (steps[s] + d_base) % ring
        if d_base == 0:
            deliver_row_zero(indptr[j], indptr[j + 1], tgt, w, dch, buf, base, ge, gi)
        else:
            deliver_row(indptr[j], indptr[j + 1], tgt, w, dch, buf, base)


@njit(inline="always")
def deliver_row(k0, k1, tgt, w, dch, buf, base):
    """Synapses k0..k1 of one spike into ring slot `base` plus each stored delay (a stored
    delay is below the ring's length: one compare, not a modulo, per synapse)."""
    ring = buf.shape[0]
    for k in range(k0, k1):
        code = dch[k]
        slot = base + (code & DELAY_MASK)
        if slot >= ring:
            slot -= ring
        buf[slot, code >> 7, tgt[k]] += w[k]


@njit(inline="always")
def deliver_row_zero(k0, k1, tgt, w, dch, buf, base, ge, gi):
    """`deliver_row` in a network with zero delays: a stored 0 goes straight into `ge`/`gi`."""
    ring = buf.shape[0]
    for k in range(k0, k1):
        code = dch[k]
        d = code & DELAY_MASK
        i = tgt[k]
        if d == 0:
            if code >> 7:
                gi[i] += w[k]
            else:
                ge[i] += w[k]
        else:
            slot = base + d
            buf[slot - ring if slot >= ring else slot, code >> 7, i] += w[k]


@njit(cache=True, nogil=True)
def poisson_cdf(lam):
    """The cumulative sums `poisson_draw` forms for `lam`, term by term in the same order (so a
    search of this table returns the same counts bit for bit), up to where they stop growing."""
    cdf = np.empty(1001)
    p = math.exp(-lam)
    s = p
    cdf[0] = s
    n = 1
    while n < 1001:
        p *= lam / n
        s += p
        cdf[n] = s
        n += 1
        if p == 0.0:
            break
    return cdf[:n]


@njit(cache=True, nogil=True)
def _external(rng, bufc, a, b, lam, extw):
    """Add each neuron's external Poisson input of this step to its arrival slot.

    Inversion against a table made once per call (`poisson_cdf`), not the exp and the
    running products per neuron: the same count for every uniform draw as `poisson_draw`
    (past the table's end, where the sums no longer grow, it returns 1000 as that does).
    """
    if lam <= 0.0:
        return
    cdf = poisson_cdf(lam)
    last = cdf.shape[0] - 1
    head = min(last + 1, 16)
    for i in range(a, b):
        u = next_uniform(rng, i)
        # the first k with u <= cdf[k] is the number of (non-decreasing) entries below u:
        # counted without branches over the first 16, so no mispredicted jump per draw
        k = 0
        for j in range(head):
            k += u > cdf[j]
        if k == head:  # a tail draw (or a large lam): go on one by one
            while k <= last and u > cdf[k]:
                k += 1
            if k > last:
                k = 1000
        bufc[i] += k * extw


@njit(inline="always")
def _threshold(v, refr, fired, i, vi, r, vth, vreset, ref):
    """Store neuron i's new v and refractory count, with threshold and reset applied (as
    selects, so the callers' loops still vectorise); flag it in `fired` and return the flag."""
    fire = (r == 0) & (vi >= vth)
    v[i] = vreset if fire else vi
    refr[i] = ref if fire else r
    fired[i] = fire
    return fire


@njit(cache=True, nogil=True)
def _lif_cuba(v, ge, gi, refr, bufe, bufi, fired, p22, p21e, p21i, dece, deci, vrest, vth, vreset, ref):
    """One exact step of current-based LIFs; returns how many fired (flags in `fired`).

    The arrays are one population's slices. Branch-free (selects, not jumps) and indexed
    from 0 (no negative-index wraparound) so that LLVM vectorises the loop; the arithmetic
    is the same expression, in the same order, as the scalar form in the naive twin.
    """
    n_fired = 0
    for i in range(v.shape[0]):
        in_e = bufe[i]
        in_i = bufi[i]
        bufe[i] = 0.0
        bufi[i] = 0.0
        r = refr[i]
        vi = v[i]
        gei = ge[i]
        gii = gi[i]
        v_new = vrest + (vi - vrest) * p22 + gei * p21e + gii * p21i
        active = r <= 0
        vi = v_new if active else vi
        r = r if active else r - 1
        ge[i] = gei * dece + in_e
        gi[i] = gii * deci + in_i
        n_fired += _threshold(v, refr, fired, i, vi, r, vth, vreset, ref)
    return n_fired


# exp(x) for the COBA kernel, in loops LLVM vectorises (Numba here has no vector math
# library, so math.exp in a loop is one libm call per neuron and step): Cody-Waite range
# reduction x = k ln2 + r (|r| <= ln2 / 2), exp(r) by its Taylor polynomial to r^12
# (truncation < 2e-16), and 2^k built in the exponent bits. Max relative error against
# math.exp ~3e-16 (tests/cluster/test_brainsim_rates.py checks it over [-700, 700]).
_LOG2E, _LN2_HI, _LN2_LO = 1.4426950408889634, 0.6931471803691238, 1.9082149292705877e-10
_SHIFTER = 6755399441055744.0           # 1.5 * 2^52: adding it leaves round(y) in the low mantissa bits
_SHIFTER_BITS = 0x4338000000000000      # its bit pattern
_EXP_C = tuple(1.0 / math.factorial(j) for j in range(13))


@njit(cache=True, nogil=True)
def exp_into(x, out, scratch):
    """out[i] = exp(x[i]) (x clamped to [-700, 700]); `scratch` float64 of the same length.

    Three branch-free loops (polynomial, exponent bits, product), each vectorised by LLVM
    when the three arrays are distinct (with `out` = `x` the overlap check sends the first
    loop down its scalar path, ~6x slower).
    """
    c = _EXP_C
    for i in range(x.shape[0]):
        xi = min(max(x[i], -700.0), 700.0)
        y = xi * _LOG2E + _SHIFTER
        k = y - _SHIFTER
        r = (xi - k * _LN2_HI) - k * _LN2_LO
        p = c[12]
        p = p * r + c[11]
        p = p * r + c[10]
        p = p * r + c[9]
        p = p * r + c[8]
        p = p * r + c[7]
        p = p * r + c[6]
        p = p * r + c[5]
        p = p * r + c[4]
        p = p * r + c[3]
        p = p * r + c[2]
        p = p * r + c[1]
        p = p * r + c[0]
        scratch[i] = y
        out[i] = p
    bits = scratch.view(np.int64)
    for i in range(x.shape[0]):
        bits[i] = (bits[i] - _SHIFTER_BITS + 1023) << 52
    two_k = bits.view(np.float64)
    for i in range(x.shape[0]):
        out[i] *= two_k[i]


@njit(cache=True, nogil=True, error_model="numpy")  # no zero-division check: the division vectorises
def _lif_coba(v, ge, gi, refr, bufe, bufi, fired, dece, deci, vrest, vth, vreset, ref, e_e, e_i, dt_tau):
    """One step of conductance-based LIFs (one population's slices): exponential Euler at
    frozen conductance, v -> v_inf + (v - v_inf) exp(-dt g_tot / tau_m) unless refractory,
    then the conductances decay exactly and take this step's input; threshold and reset.

    Four loops that LLVM vectorises: the decay argument, `exp_into`, the voltage update (its
    division vectorises only without Python's zero-division check, hence NumPy's error
    model; g_tot = 1 + g_e + g_i is not zero for any sensible conductances), then the same
    tail as `_lif_cuba`. One loop with a libm exp per neuron ran ~10 ns per neuron and step.
    """
    n = v.shape[0]
    arg = np.empty(n)
    decay = np.empty(n)
    scratch = np.empty(n)
    for i in range(n):
        arg[i] = -dt_tau * (1.0 + ge[i] + gi[i])
    exp_into(arg, decay, scratch)  # three distinct arrays: an aliased pair fails LLVM's overlap check
    for i in range(n):
        gei = ge[i]
        gii = gi[i]
        vi = v[i]
        vinf = (vrest + gei * e_e + gii * e_i) / (1.0 + gei + gii)
        v_new = vinf + (vi - vinf) * decay[i]
        v[i] = v_new if refr[i] <= 0 else vi
    n_fired = 0
    for i in range(n):
        in_e = bufe[i]
        in_i = bufi[i]
        bufe[i] = 0.0
        bufi[i] = 0.0
        r = refr[i]
        r = r if r <= 0 else r - 1
        ge[i] = ge[i] * dece + in_e
        gi[i] = gi[i] * deci + in_i
        n_fired += _threshold(v, refr, fired, i, v[i], r, vth, vreset, ref)
    return n_fired


@njit(cache=True, nogil=True)
def _lif_delta(v, refr, bufe, bufi, fired, p22, vrest, vth, vreset, ref):
    """One exact step of delta-synapse LIFs (one population's slices): the input is a jump of v."""
    n_fired = 0
    for i in range(v.shape[0]):
        jump = bufe[i] + bufi[i]
        bufe[i] = 0.0
        bufi[i] = 0.0
        r = refr[i]
        vi = v[i]
        v_new = vrest + (vi - vrest) * p22 + jump
        active = r <= 0
        vi = v_new if active else vi
        r = r if active else r - 1
        n_fired += _threshold(v, refr, fired, i, vi, r, vth, vreset, ref)
    return n_fired


@njit(cache=True, nogil=True)
def _lif_alpha(v, ie, ii, die, dii, refr, bufe, bufi, fired, p22, p11e, p11i, dt, p31e, p32e, p31i, p32i, drive,
               psce, psci, vrest, vth, vreset, ref):
    """One exact step of LIFs with alpha-shaped currents (NEST's iaf_psc_alpha; Rotter &
    Diesmann 1999), one population's slices: v from (dI, I) of each channel and the
    constant drive, then I <- dt P11 dI + P11 I, dI <- P11 dI + e/tau_syn x input (pA)."""
    n_fired = 0
    for i in range(v.shape[0]):
        in_e = bufe[i]
        in_i = bufi[i]
        bufe[i] = 0.0
        bufi[i] = 0.0
        r = refr[i]
        vi = v[i]
        v_new = vrest + drive + p31e * die[i] + p32e * ie[i] + p31i * dii[i] + p32i * ii[i] + (vi - vrest) * p22
        active = r <= 0
        vi = v_new if active else vi
        r = r if active else r - 1
        ie[i] = dt * p11e * die[i] + p11e * ie[i]
        die[i] = p11e * die[i] + psce * in_e
        ii[i] = dt * p11i * dii[i] + p11i * ii[i]
        dii[i] = p11i * dii[i] + psci * in_i
        n_fired += _threshold(v, refr, fired, i, vi, r, vth, vreset, ref)
    return n_fired


@njit(cache=True, nogil=True)
def _poisson(rng, fired, p_spike):
    """One step of Poisson generators (one population's slices); returns how many fired."""
    n_fired = 0
    for i in range(fired.shape[0]):
        fire = next_uniform(rng, i) < p_spike
        fired[i] = fire
        n_fired += fire
    return n_fired


@njit(cache=True, nogil=True)
def _gather(fired, n_fired, step, lo, out_steps, out_neurons, count):
    """Append the flagged neurons, in index order, as spikes at `step`; clear the flags.

    `fired` is padded to a multiple of 8 bytes and read a word at a time: at a few spikes
    per step almost every word is zero.
    """
    words = fired.view(np.uint64)
    k = 0
    while n_fired > 0:
        if words[k] != 0:
            for i in range(8 * k, 8 * k + 8):
                if fired[i]:
                    fired[i] = 0
                    out_steps[count] = step
                    out_neurons[count] = lo + i
                    count += 1
                    n_fired -= 1
        k += 1
    return count


@njit(cache=True, nogil=True)
def fired_scratch(n):
    """The `fired` flags `advance` needs for n neurons: zeros, padded to whole 8-byte words."""
    return np.zeros(-(-n // 8) * 8, np.uint8)


@njit(cache=True, nogil=True)
def advance(pops, pidx, lo, step0, n_steps, v, ge, gi, de, di, refr, rng, buf, src_steps, src_neurons, src_ptr,
            out_steps, out_neurons, fired):
    """Update neurons from step `step0` for `n_steps` steps; return the spike count written.

    One step t -> t+1: exact propagation of the linear sub-threshold dynamics (CUBA,
    delta synapses; exponential Euler at frozen conductance for COBA), then the input
    arriving at t+1 from the ring buffer and the external Poisson drive, then threshold,
    reset and refractoriness. A spike is stamped with step t+1. Populations are contiguous
    index ranges, so each is updated in its own loop with its parameters held in registers;
    the update loops only flag who fired in `fired` (see `fired_scratch`), and the spikes
    are gathered once per step in neuron order, then the spike sources' are appended.
    """
    ring = buf.shape[0]
    n = v.shape[0]
    hi = lo + n
    count = 0
    for t in range(step0, step0 + n_steps):
        slot = (t + 1) % ring
        bufe = buf[slot, 0]
        bufi = buf[slot, 1]
        n_fired = 0
        for r in range(pops.shape[0]):
            row = pops[r]
            a = max(lo, int(row[P_LO])) - lo
            b = min(hi, int(row[P_LO] + row[P_N])) - lo
            if a >= b:
                continue
            model = int(row[P_MODEL])
            if model == POISSON:
                n_fired += _poisson(rng[a:b], fired[a:b], row[P_RATEP])
                continue
            if model == SPIKE_SOURCE:
                continue
            ref, vth, vreset, vrest = int(row[P_REF]), row[P_VTH], row[P_VRESET], row[P_VREST]
            if row[P_EXTLAM] > 0.0:
                _external(rng, bufi if row[P_EXTCH] > 0.5 else bufe, a, b, row[P_EXTLAM], row[P_EXTW])
            if model == LIF_ALPHA:  # ge, gi: the currents I; de, di: their derivatives dI
                n_fired += _lif_alpha(v[a:b], ge[a:b], gi[a:b], de[a:b], di[a:b], refr[a:b], bufe[a:b], bufi[a:b],
                                      fired[a:b], row[P_P22], row[P_DECE], row[P_DECI], row[P_DT], row[P_P31E],
                                      row[P_P32E], row[P_P31I], row[P_P32I], row[P_IE], row[P_PSCE], row[P_PSCI],
                                      vrest, vth, vreset, ref)
            elif model == LIF_CUBA:
                n_fired += _lif_cuba(v[a:b], ge[a:b], gi[a:b], refr[a:b], bufe[a:b], bufi[a:b], fired[a:b],
                                     row[P_P22], row[P_P21E], row[P_P21I], row[P_DECE], row[P_DECI], vrest, vth,
                                     vreset, ref)
            elif model == LIF_COBA:
                n_fired += _lif_coba(v[a:b], ge[a:b], gi[a:b], refr[a:b], bufe[a:b], bufi[a:b], fired[a:b],
                                     row[P_DECE], row[P_DECI], vrest, vth, vreset, ref, row[P_EE], row[P_EI],
                                     row[P_DT] / row[P_TAUM])
            else:
                n_fired += _lif_delta(v[a:b], refr[a:b], bufe[a:b], bufi[a:b], fired[a:b], row[P_P22], vrest, vth,
                                      vreset, ref)
        count = _gather(fired, n_fired, t + 1, lo, out_steps, out_neurons, count)
        # spike sources: their (step, local neuron) list is sorted by step
        p = src_ptr[0]
        while p < src_steps.shape[0] and src_steps[p] <= t + 1:
            if src_steps[p] == t + 1:
                out_steps[count] = t + 1
                out_neurons[count] = lo + src_neurons[p]
                count += 1
            p += 1
        src_ptr[0] = p
    return count


@njit(cache=True, nogil=True)
def run_windows(n_windows, window, step0, pops, pidx, lo, v, ge, gi, de, di, refr, rng, buf, indptr, tgt, w,
                dch, d_base, pend_steps, pend_neurons):
    """Several windows of a partition that is the whole network, without leaving Numba.

    The same deliver-then-advance sequence as the runner's loop (so results match it
    bit for bit); only for networks without spike sources. Returns all spikes emitted.
    """
    n = v.shape[0]
    cur_s = np.empty(n * window + 1, np.int64)
    cur_n = np.empty(n * window + 1, np.int64)
    prev_s = pend_steps.copy()
    prev_n = pend_neurons.copy()
    n_prev = prev_s.shape[0]
    cap = max(1024, 4 * n_prev * n_windows)
    all_s = np.empty(cap, np.int64)
    all_n = np.empty(cap, np.int64)
    m = 0
    no_src = np.empty(0, np.int64)
    src_ptr = np.zeros(1, np.int64)
    fired = fired_scratch(n)
    for k in range(n_windows):
        deliver(prev_s[:n_prev], prev_n[:n_prev], indptr, tgt, w, dch, buf, d_base, ge, gi)
        c = advance(pops, pidx, lo, step0 + k * window, window, v, ge, gi, de, di, refr, rng, buf, no_src, no_src,
                    src_ptr, cur_s, cur_n, fired)
        if m + c > cap:
            cap = 2 * (m + c)
            grown_s = np.empty(cap, np.int64)
            grown_n = np.empty(cap, np.int64)
            grown_s[:m] = all_s[:m]
            grown_n[:m] = all_n[:m]
            all_s, all_n = grown_s, grown_n
        all_s[m:m + c] = cur_s[:c]
        all_n[m:m + c] = cur_n[:c]
        m += c
        if prev_s.shape[0] < c:
            prev_s = np.empty(cur_s.shape[0], np.int64)
            prev_n = np.empty(cur_s.shape[0], np.int64)
        prev_s[:c] = cur_s[:c]
        prev_n[:c] = cur_n[:c]
        n_prev = c
    return all_s[:m].copy(), all_n[:m].copy()
