"""Joint linear refit of continuum templates and line amplitudes at fixed kinematics.

After the continuum fit (stellar kinematics) and the line fit (gas kinematics, ratios),
:func:`joint_refit` solves once more for the template weights and the line amplitudes
*together* — the pPXF "stars + gas" linear problem — with every non-linear parameter
held at its fitted value.  Where a Balmer emission line sits in a Balmer absorption
trough the two are degenerate; fitting the continuum on a line-masked spectrum and the
lines on its residual can leave part of the absorption in the emission flux, the joint
solve does not.  Comparing ``<LINE>_FLUX`` before and after shows the effect.

Weights are ``≥ 0``; amplitudes too unless ``allow_absorption``.  The solve is NNLS on
the Gram matrix (:func:`cubefit.solvers.exact.nnls_on_gram`) or, with absorption
allowed, bounded least squares (``scipy.optimize.lsq_linear``).  The formal errors of
the amplitudes come from the inverse Gram matrix over the templates with non-zero
weight and all amplitudes (the kinematics are fixed, so ``VSHIFT``/``SIGMA`` keep no
error in this refit).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import lsq_linear

from ..solvers.exact import nnls_on_gram
from .data import Spectrum
from .emlines import EmlineResult, build_result

__all__ = ["joint_refit", "JointResult", "joint_columns", "JOINT_SUFFIX"]

JOINT_SUFFIX = "_JOINT"
"""Suffix of the catalogue columns of the joint refit (``HBETA_FLUX_JOINT``, ...)."""

_PER_LINE = ("FLUX", "FLUX_IVAR")
"""Line quantities written for the joint refit (kinematics are held fixed; two columns
per line keep a catalogue with photometry within FITS's 999 columns)."""


def joint_columns(linelist) -> tuple[tuple[str, str, str, str], ...]:
    """``(name, dtype, unit, description)`` of the columns :meth:`JointResult.to_row`
    writes: ``RCHI2_JOINT`` then, per line of ``linelist``, ``<LINE>_FLUX_JOINT`` and
    ``<LINE>_FLUX_IVAR_JOINT`` (units as the line-only columns)."""
    from .emlines import emline_columns
    by_name = {c[0]: c for c in emline_columns(linelist)}
    cols = [("RCHI2_JOINT", "f4", "", "reduced chi2 of the joint stars + gas refit over the unmasked pixels")]
    for line in linelist:
        for q in _PER_LINE:
            name, dt, unit, desc = by_name[f"{line.column}_{q}"]
            cols.append((name + JOINT_SUFFIX, dt, unit, desc + " (joint stars + gas refit)"))
    return tuple(cols)


@dataclass
class JointResult:
    """``weights`` of the basis columns, ``continuum`` per camera ``(npix,)``, and
    ``emlines`` the line measurements on that continuum (same columns as a line fit);
    ``chi2``/``dof`` of the joint fit over its pixels."""

    weights: np.ndarray
    continuum: list
    emlines: EmlineResult
    chi2: float = float("nan")
    dof: int = 0

    def to_row(self) -> dict:
        """The :func:`joint_columns` values (lines not fitted: zeros, as in a line fit)."""
        lines = self.emlines.to_row()
        row = {"RCHI2_JOINT": self.chi2 / self.dof if self.dof > 0 else float("nan")}
        for line in self.emlines.linelist:
            for q in _PER_LINE:
                key = f"{line.column}_{q}"
                row[key + JOINT_SUFFIX] = lines[key]
        return row


def joint_refit(spec: Spectrum, templates, lines: EmlineResult, *, allow_absorption: bool = False) -> JointResult:
    """Refit template weights and line amplitudes together at ``lines``' kinematics.

    ``templates``: per camera an ``(npix, P)`` array — the continuum basis on that
    camera's pixels exactly as the continuum fitter uses it (LOSVD, resolution, dust and
    multiplicative polynomial applied; additive polynomials may be extra columns).
    ``lines``: a successful :func:`~cubefit.spectra.emlines.fit_emlines` result of ``spec``.
    """
    if lines.model is None or lines.status != 0:
        raise ValueError("joint_refit needs a successful fit_emlines result of this spectrum (with its model)")
    T = [np.asarray(t, dtype=np.float64) for t in templates]
    if len(T) != len(spec.cameras):
        raise ValueError(f"templates: expected one (npix, P) array per camera ({len(spec.cameras)}), got {len(T)}")
    P = {t.shape[1] if t.ndim == 2 else -1 for t in T}
    for t, cam in zip(T, spec.cameras):
        if t.ndim != 2 or t.shape[0] != cam.npix or len(P) != 1:
            raise ValueError(f"templates of camera {cam.name!r}: shape {t.shape}, expected ({cam.npix}, P) "
                             "with the same P on every camera")
    P = P.pop()
    model = lines.model
    theta = np.array(lines.theta, dtype=np.float64)
    L = model.amplitude_columns(theta)
    rows, rhs = [], []
    for cam, t, lc, c in zip(spec.cameras, T, L, model.cams):
        good = (c.ivar > 0) & np.all(np.isfinite(t), axis=1)
        sw = np.sqrt(c.ivar[good])
        rows.append(np.hstack([t[good], lc[good]]) * sw[:, None])
        rhs.append(cam.flux[good] * sw)
    X, b = np.vstack(rows), np.concatenate(rhs)
    G, c = X.T @ X, X.T @ b
    if allow_absorption:
        lo = np.concatenate([np.zeros(P), np.full(model.n_amp, -np.inf)])
        z = lsq_linear(X, b, bounds=(lo, np.inf), method="bvls").x
    else:
        z = nnls_on_gram(G, c)
    w, amp = z[:P], z[P:]
    continuum = [t @ w for t in T]
    theta[:model.n_amp] = amp
    act = np.concatenate([np.flatnonzero(w > 0), P + np.arange(model.n_amp)])
    Ga = G[np.ix_(act, act)]
    live = np.diag(Ga) > 0
    cov_a = np.zeros_like(Ga)
    cov_a[np.ix_(live, live)] = np.linalg.pinv(Ga[np.ix_(live, live)], rcond=1e-12, hermitian=True)
    cov = np.zeros((model.nparams, model.nparams))
    na = act.size - model.n_amp
    cov[:model.n_amp, :model.n_amp] = cov_a[na:, na:]
    refit = build_result(spec, model.with_data(spec, continuum), theta, cov, continuum, lines.linelist,
                         delta_chi2=lines.delta_chi2, delta_ndof=lines.delta_ndof, broad=lines.broad)
    r = X @ z - b
    dof = b.size - int(np.count_nonzero(w > 0)) - model.n_amp
    return JointResult(w, continuum, refit, chi2=float(r @ r), dof=dof)
