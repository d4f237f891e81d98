"""Independent brute-force references shared by the tests.

Everything here is written the slow, obvious way (Python loops, ``np.interp``,
``np.convolve``, dense matrices) straight from DESIGN §2, so that the fast code
is checked against something that shares none of its tricks.
"""
import numpy as np

from cubefit import C_KMS
from cubefit.grids import edges_from_centres


def dense_overlap(src, dst):
    """R[l, t] = |bin_l ∩ bin_t| / |bin_l| by a plain double loop."""
    se, de = edges_from_centres(src), edges_from_centres(dst)
    R = np.zeros((dst.size, src.size))
    for l in range(dst.size):
        for t in range(src.size):
            R[l, t] = max(0.0, min(de[l + 1], se[t + 1]) - max(de[l], se[t])) / (de[l + 1] - de[l])
    return R


def brute_force_convolve(spec, h):
    """Σ_k h(k) spec[t-k] with zeros outside, via np.convolve('full') cropped by K."""
    K = h.size // 2
    return np.convolve(spec, h, mode="full")[K:K + spec.size]


def direct_kernel(hist, vel_pix, dlog_t):
    """Unit-area kernel on shifts k = -K..K from one histogram (V,), zero if empty."""
    K = int(np.ceil(np.max(np.abs(vel_pix)) / (C_KMS * dlog_t) - 1e-9))
    h = np.zeros(2 * K + 1)
    for i, k in enumerate(range(-K, K + 1)):
        v = C_KMS * (np.exp(k * dlog_t) - 1.0)
        h[i] = max(0.0, np.interp(v, vel_pix, hist, left=0.0, right=0.0))
    return h / h.sum() if h.sum() > 0 else h


def trapezoid_by_hand(y, x):
    """∫ y dx by the trapezoid rule, term by term."""
    return sum(0.5 * (y[i] + y[i + 1]) * (x[i + 1] - x[i]) for i in range(len(x) - 1))


def direct_hypercube(templates, tem_pix, obs_pix, vel_pix, losvd, norm_mode="model",
                     amp_mode="sum", data_flux=None):
    """Materialised ``A (S, C, P, L)`` of DESIGN §2, loop by loop (small problems only)."""
    dlog_t = float(np.mean(np.diff(tem_pix)))
    Rd = dense_overlap(tem_pix, obs_pix)
    S, V, C = losvd.shape
    P = templates.shape[0]
    A = np.zeros((S, C, P, obs_pix.size))
    for s in range(S):
        amps = [losvd[s, :, c].sum() if amp_mode == "sum" else trapezoid_by_hand(losvd[s, :, c], vel_pix)
                for c in range(C)]
        for c in range(C):
            if norm_mode == "model":
                g = amps[c]
            else:
                g = data_flux[s] * amps[c] / sum(amps) if sum(amps) > 0 else 0.0
            h = direct_kernel(losvd[s, :, c], vel_pix, dlog_t)
            for p in range(P):
                A[s, c, p] = g * (Rd @ brute_force_convolve(templates[p], h))
    return A
