"""Forward model of one target's continuum and its variable-projection residual.

The model of camera ``c`` at pixel ``i`` is ::

    f_c[i] = M_c[i] · D_c[i] · Σ_p w_p (R_c B_c (T_p ⊛ L_θ))[i]  +  Σ_k a_k P_k(x_c[i])

* ``T_p`` template ``p`` (rest frame, uniform ln λ), ``L_θ`` the LOSVD (Gauss–Hermite in
  ``v``, ``σ``, ``h3``, ``h4``) convolved through its analytic Fourier transform
  (:func:`cubefit.losvd.gauss_hermite_rfft`) with the cached block FFTs of
  :class:`PreparedTemplates`.  Each block gets the instrumental broadening as an extra
  Gaussian variance (signed) in the same transform: ``σ_data² − σ_tmpl²`` for a FWHM
  resolution, ``−σ_tmpl²`` for a resolution matrix (which then adds the data's own),
  ``0`` without resolution (data taken to share the templates' resolution).  Where
  ``σ² + var < 0`` the block is clipped at the templates' resolution (flagged).
* ``B_c`` bins the model grid onto the camera's pixels by exact overlap — a plain
  sum when the camera is log-sampled with an integer multiple of the template step:
  then the grid is shifted by a fraction of a pixel (inside the transform) to line
  up with the camera's pixel edges.  ``R_c`` the camera's resolution matrix, if any.
* ``M_c`` the multiplicative Legendre polynomial ``1 + Σ_k m_k P_k(x)`` and ``D_c =
  exp(−τ_V k(λ)/k(V))`` the Calzetti (2000) attenuation (rest frame); ``P_k`` the
  additive Legendre polynomials; ``x ∈ [−1, 1]`` linear in ln λ over the fitted pixels.

The redshift only selects which template pixels meet which data pixels: observed
``ln λ = ln λ_rest + ln(1+z) + v/c`` (``v`` relative to ``z`` as in pPXF).

For given non-linear parameters θ, the weights ``w ≥ 0`` and polynomial
coefficients ``a`` are solved exactly (the additive polynomials are projected out,
then NNLS on the small Gram matrix, :func:`cubefit.solvers.exact.nnls_on_gram`), and
:meth:`TargetModel.residual` returns the weighted residual of that optimum.  Its
Jacobian (Kaufman 1975) is ``−P⊥ ∂(A w)/∂θ`` with ``P⊥`` the projector orthogonal to
the active columns; because convolution is linear, ``∂(A w)/∂θ`` needs one inverse
FFT per parameter of the weight-combined template ``Σ_p w_p T̂_p``, not one per
template.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.linalg import solve_triangular
from extinction import calzetti00
from numpy.polynomial import legendre

from .. import C_KMS
from ..grids import rebin_matrix
from ..losvd import gauss_hermite_rfft
from ..solvers.exact import nnls_on_gram_warm
from .data import FWHM_PER_SIGMA, Spectrum, air_to_vacuum
from .templates_prep import MAX_DATA_SIGMA, PreparedTemplates

__all__ = ["TargetModel", "TargetProblem", "EMISSION_LINES", "line_mask", "STATUS"]

STATUS = {"ok": 0, "bad_input": 1, "no_pixels": 2, "out_of_range": 3, "fit_failed": 4}
"""Per-target status codes of a continuum fit."""

def _packaged_lines() -> dict:
    from .linelist import default_linelist
    return {line.name: float(line.restwave) for line in default_linelist()}


EMISSION_LINES = _packaged_lines()
"""Rest vacuum wavelengths (Å) of the emission lines masked in continuum fits by
default: every line of the packaged line list
(``cubefit/spectra/resources/emlines.ecsv``, :mod:`cubefit.spectra.linelist`), the list
the emission-line fit uses — one source for both."""


class TargetProblem(Exception):
    """A per-target problem (bad data, no usable pixels, out of template range):
    carries its :data:`STATUS` code; the fitter turns it into a result row."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = STATUS[status]


def line_mask(wave_vac, z: float, half_width: float = 800.0, lines=None) -> np.ndarray:
    """True for observed vacuum wavelengths ``wave_vac`` (Å) within ``half_width`` km/s
    of a line at redshift ``z``; ``lines``: rest vacuum wavelengths (Å), default
    :data:`EMISSION_LINES`."""
    ln = np.log(np.asarray(wave_vac, dtype=np.float64))
    out = np.zeros(ln.shape, dtype=bool)
    for lam in sorted(set(EMISSION_LINES.values() if lines is None else lines)):
        out |= np.abs(ln - math.log(lam * (1.0 + z))) < half_width / C_KMS
    return out


@dataclass
class _Block:
    j: int            # template block index
    o0: int           # output template pixels [o0, o1)
    o1: int
    var: float        # extra Gaussian variance, pixels² (signed)


@dataclass
class _Camera:
    name: str
    npix: int
    good: np.ndarray          # (npix,) bool: pixels in the fit
    y: np.ndarray             # (n_good,) weighted data
    sw: np.ndarray            # (npix,) sqrt(ivar)
    m0: int                   # model pixels [m0, m1) on the template grid
    m1: int
    ratio: int                # > 0: aligned sum binning of `ratio` model pixels, start `start`
    start: int
    rebin: object             # sparse (npix, m1 - m0) when ratio == 0: binning, then resolution
    rebin_good: object        # its fitted rows
    blocks: list
    x: np.ndarray             # (npix,) Legendre coordinate
    kdust: np.ndarray         # (npix,) A_λ/A_V, Calzetti (2000)
    valid: np.ndarray         # (npix,) model defined (inside the templates)
    finer: bool               # data finer than the templates somewhere in the fit
    centres: np.ndarray       # (npix,) pixel centres in model-pixel units
    ln_rest: np.ndarray       # (npix,) rest-frame ln λ (vacuum)


class TargetModel:
    """One target prepared for fitting (module docstring).

    ``params`` order: v, σ (km/s), [h3, h4] (``moments=4``), m_1..m_mdegree, [τ_V].
    ``mdegree=None`` chooses one degree per 1000 Å of rest-frame range fitted.
    Raises :class:`TargetProblem` for per-target problems.
    """

    def __init__(self, spec: Spectrum, pt: PreparedTemplates, *, moments: int = 2, degree: int = -1,
                 mdegree: int = 0, dust: bool = False, line_half_width: float = 800.0,
                 vel_max: float | None = None, sigma_max: float | None = None, mask_lines=None):
        if moments not in (2, 4):
            raise ValueError(f"moments: expected 2 (v, σ) or 4 (v, σ, h3, h4), got {moments}")
        if degree < -1 or (mdegree is not None and mdegree < 0):
            raise ValueError(f"degree ≥ -1 and mdegree ≥ 0 (or None) expected, got {degree}, {mdegree}")
        self.pt, self.moments, self.degree, self.mdegree, self.dust = pt, moments, degree, mdegree, dust
        self.z = float(spec.z)
        if not (np.isfinite(self.z) and self.z > -0.01):
            raise TargetProblem("bad_input", f"redshift z={spec.z!r} is not a finite value > -0.01")
        self.vel_max = min(pt.vel_max, vel_max if vel_max is not None else pt.vel_max)
        self.sigma_max = min(pt.sigma_max, sigma_max if sigma_max is not None else pt.sigma_max)
        self.lnz = math.log1p(self.z)
        self.mask_lines = None if mask_lines is None else tuple(float(x) for x in mask_lines)
        self._setup_cameras(spec, line_half_width)
        if mdegree is None:            # one degree per 1000 Å of rest-frame range fitted
            lo = min(c.ln_rest[c.good].min() for c in self.cameras if c.good.any())
            hi = max(c.ln_rest[c.good].max() for c in self.cameras if c.good.any())
            self.mdegree = int((math.exp(hi) - math.exp(lo)) // 1000.0)
        self.n_good = sum(int(c.good.sum()) for c in self.cameras)
        if self.n_good < self.n_params + degree + 1 + 3:
            raise TargetProblem("no_pixels", f"only {self.n_good} usable pixels for {self.n_params} "
                                f"non-linear parameters, {degree + 1} polynomial terms and the weights")
        self.y = np.concatenate([c.y for c in self.cameras])
        if degree >= 0:
            X = np.concatenate([legendre.legvander(c.x[c.good], degree) * c.sw[c.good, None]
                                for c in self.cameras])
            self.Q, self.Rq = np.linalg.qr(X)            # (n_good, degree + 1), orthonormal
        else:
            self.Q, self.Rq = np.zeros((self.n_good, 0)), None
        self._state = None
        self._active = None
        self._sub = None                 # template subset in use (None: all)
        self._sub_fft = {}               # block → its rfft rows of the subset
        self.n_eval = 0                  # linear solves done (model evaluations)

    # ------------------------------------------------------------------ set-up
    @property
    def n_params(self) -> int:
        return self.moments + self.mdegree + int(self.dust)

    @property
    def subset(self) -> np.ndarray | None:
        """Indices of the templates the linear solve may use (None: all of them)."""
        return self._sub

    def set_subset(self, subset) -> None:
        """Restrict the linear solve to templates ``subset`` (indices; None: all).

        The weights of the other templates are held at zero, so every evaluation
        convolves only the subset.  Where the full problem's optimum uses only
        templates of the subset, both problems have the same residual and
        Jacobian there (:func:`cubefit.spectra.continuum.fit_continuum` checks it).
        """
        sub = None if subset is None else np.unique(np.asarray(subset, dtype=np.intp))
        if sub is not None and sub.size == self.pt.P:
            sub = None
        same = (sub is None and self._sub is None) or (
            sub is not None and self._sub is not None and np.array_equal(sub, self._sub))
        if same:
            return
        self._sub, self._sub_fft, self._state, self._active = sub, {}, None, None

    def _block_fft(self, j: int) -> np.ndarray:
        """rfft rows of block ``j`` for the templates in use."""
        if self._sub is None:
            return self.pt.block_rfft(j)
        if j not in self._sub_fft:
            self._sub_fft[j] = self.pt.block_rfft(j)[self._sub]
        return self._sub_fft[j]

    def _setup_cameras(self, spec: Spectrum, half_width: float) -> None:
        pt = self.pt
        dlog = pt.dlog
        edge0 = pt.ln_lam[0] - 0.5 * dlog                     # template grid's first edge
        cams, self.delta = [], 0.0
        # Margin (model pixels) a model pixel needs inside the covered templates.
        sig_res = max([float(np.max(C_KMS * cam.resolution.fwhm / (FWHM_PER_SIGMA * cam.wave)))
                       for cam in spec.cameras
                       if cam.resolution is not None and cam.resolution.kind == "fwhm"], default=0.0)
        kc = int(math.ceil((self.vel_max + 5.0 * math.hypot(self.sigma_max, sig_res)) / pt.velscale)) + 2
        cov = np.concatenate(([0], np.cumsum(~pt.covered)))
        aligned_found = False
        raw = []
        for cam in spec.cameras:
            wave = air_to_vacuum(cam.wave) if spec.air else cam.wave
            if np.any(~np.isfinite(wave)) or np.any(np.diff(wave) <= 0):
                raise TargetProblem("bad_input", f"camera {cam.name!r}: wavelengths are not finite "
                                    "and strictly increasing")
            bad = (cam.ivar < 0) | ~np.isfinite(cam.ivar) | ((cam.ivar > 0) & ~np.isfinite(cam.flux))
            if bad.any():
                raise TargetProblem("bad_input", f"camera {cam.name!r}: {int(bad.sum())} pixels with "
                                    "negative/non-finite ivar or non-finite flux where ivar > 0; "
                                    "set ivar = 0 on bad pixels")
            ln = np.log(wave) - self.lnz                       # rest frame
            e = np.concatenate(([1.5 * ln[0] - 0.5 * ln[1]], 0.5 * (ln[1:] + ln[:-1]),
                                [1.5 * ln[-1] - 0.5 * ln[-2]]))
            step = np.diff(ln)
            ratio = 0
            if not aligned_found and step.size > 1:
                r = float(np.median(step)) / dlog
                if round(r) >= 1 and np.max(np.abs(step / dlog - round(r))) < 1e-4 * round(r):
                    ratio = int(round(r))
                    aligned_found = True
                    # Camera edges are edge0 + (n + f)·dlog; shift the model grid by f.
                    f = (e[0] - edge0) / dlog
                    self.delta = f - math.floor(f + 0.5)
            raw.append((cam, wave, ln, e, ratio))
        for cam, wave, ln, e, ratio in raw:
            # Model pixel o spans [o, o+1) in these units (centre ln_lam[o] + delta·dlog);
            # the grid may run past the templates (zeros there, those pixels invalid).
            pos = (e - edge0) / dlog - self.delta
            centres = 0.5 * (pos[1:] + pos[:-1])
            m0 = int(math.floor(pos[0])) - 1
            m1 = int(math.ceil(pos[-1])) + 1
            ci = np.floor(centres).astype(int)
            lo_i, hi_i = ci - kc, ci + kc + 1
            valid = (lo_i >= 0) & (hi_i <= pt.T)
            valid[valid] = (cov[hi_i[valid]] - cov[lo_i[valid]]) == 0
            if not valid.any():
                raise TargetProblem("out_of_range", f"camera {cam.name!r} ({wave[0]:.0f}–{wave[-1]:.0f} Å "
                                    f"at z={self.z:.5g}: rest {math.exp(ln[0]):.0f}–{math.exp(ln[-1]):.0f} Å)"
                                    f" lies outside the templates ({math.exp(pt.ln_lam[0]):.0f}–"
                                    f"{math.exp(pt.ln_lam[-1]):.0f} Å, less a {kc * pt.velscale:.0f} km/s "
                                    "margin); check the redshift or widen the templates' lam_range")
            good = (cam.ivar > 0) & valid & ~line_mask(wave, self.z, half_width, self.mask_lines)
            res = cam.resolution
            matrix = res is not None and res.kind == "matrix"
            start, rebin = (int(round(pos[0])) - m0, None) if ratio else (0, None)
            if matrix or not ratio:
                # One sparse operator per camera: exact-overlap binning, then the resolution
                # matrix (applied to the fitted rows only while fitting).
                grid_c = pt.ln_lam[0] + (np.arange(m0, m1) + self.delta) * dlog
                rebin = rebin_matrix(grid_c, ln)
                if matrix:
                    rebin = res.sparse() @ rebin
                rebin = rebin.tocsr()
                ratio = 0
            sw = np.sqrt(np.where(good, cam.ivar, 0.0))
            blocks, finer = self._blocks(m0, m1, res, good, centres)
            kd = calzetti00(np.exp(ln).astype(np.float64), 1.0, 4.05)
            cams.append(_Camera(name=cam.name, npix=wave.size, good=good, y=(cam.flux * sw)[good],
                                sw=sw, m0=m0, m1=m1, ratio=ratio, start=start, rebin=rebin,
                                rebin_good=None if rebin is None else rebin[good],
                                blocks=blocks, x=ln.copy(), kdust=kd, valid=valid, finer=finer,
                                centres=centres, ln_rest=ln))
        if not any(c.good.any() for c in cams):
            raise TargetProblem("no_pixels", "no usable pixel: every pixel is masked (ivar = 0), "
                                "in an emission-line window or outside the templates")
        lo = min(c.x[c.good].min() for c in cams if c.good.any())
        hi = max(c.x[c.good].max() for c in cams if c.good.any())
        for c in cams:
            c.x = 2.0 * (c.x - lo) / (hi - lo) - 1.0 if hi > lo else np.zeros_like(c.x)
        self.cameras = cams

    def _blocks(self, m0, m1, res, good, centres):
        """Blocks covering the model pixels [m0, m1) inside the templates, each with its
        extra Gaussian variance (pixels², signed; module docstring)."""
        pt = self.pt
        sig_t = pt.sigma_v()
        a, b = max(m0, 0), min(m1, pt.T)
        out, finer = [], False
        for j in range(a // pt.block, (b - 1) // pt.block + 1):
            o0, o1 = max(j * pt.block, a), min((j + 1) * pt.block, b)
            oc = (o0 + o1 - 1) // 2
            if res is None:
                var = 0.0
            elif res.kind == "matrix":
                var = -sig_t[oc] ** 2
            else:
                lam_obs = math.exp(pt.ln_lam[oc] + self.lnz)
                fw = float(np.interp(oc + 0.5, centres, res.fwhm))
                var = (C_KMS * fw / (FWHM_PER_SIGMA * lam_obs)) ** 2 - sig_t[oc] ** 2
            if var > MAX_DATA_SIGMA ** 2:
                raise TargetProblem("bad_input", f"the data's resolution (σ = {math.sqrt(var):.0f} km/s "
                                    "beyond the templates') is coarser than the templates were prepared "
                                    f"for ({MAX_DATA_SIGMA:.0f} km/s)")
            finer |= bool(var < 0 and good[(centres >= o0) & (centres < o1)].any())
            out.append(_Block(j, o0, o1, var / pt.velscale ** 2))
        return out, finer

    # ------------------------------------------------------------------ evaluation
    def _split(self, theta):
        th = np.asarray(theta, dtype=np.float64)
        v, s = th[0], th[1]
        h3, h4 = (th[2], th[3]) if self.moments == 4 else (0.0, 0.0)
        mp = th[self.moments:self.moments + self.mdegree]
        tau = th[-1] if self.dust else 0.0
        return v, s, h3, h4, mp, tau

    def _losvd(self, v, s, h3, h4, var):
        """Block LOSVD transform, its derivatives and the number of frequencies worth
        keeping (the Gaussian factor below e⁻³⁰ beyond); clipped at the templates'
        resolution where ``σ² + var < 0``."""
        vp, sp = v / self.pt.velscale - self.delta, s / self.pt.velscale
        clipped = sp * sp + var < 0
        ext = -sp * sp if clipped else var
        L, d = gauss_hermite_rfft(self.pt.nfft, vp, sp, h3, h4, ext, derivatives=True)
        if clipped:                      # width fixed at the templates': no σ² in the exponent
            w = 2.0 * np.pi * np.arange(L.size) / self.pt.nfft
            d[1] += sp * w * w * L
        d[0] /= self.pt.velscale
        d[1] /= self.pt.velscale
        s_eff = sp * sp + ext
        n = L.size
        if s_eff > 0:
            n = min(n, int(math.sqrt(60.0 / s_eff) * self.pt.nfft / (2.0 * np.pi)) + 2)
        return L[:n], d[:, :n], clipped

    def _camera_columns(self, c: _Camera, grid: np.ndarray, full: bool) -> np.ndarray:
        """Model grid ``(n, m1-m0)`` → the camera's pixels (binning, resolution):
        ``(n, npix)`` with ``full``, else only the fitted pixels ``(n, n_good_c)``."""
        if c.ratio:
            idx = c.start + c.ratio * (np.arange(c.npix) if full else np.flatnonzero(c.good))
            out = grid[:, idx]
            for k in range(1, c.ratio):
                out += grid[:, idx + k]
            return out * (1.0 / c.ratio)
        op = c.rebin if full else c.rebin_good
        return (op @ grid.T).T

    def _convolve(self, c: _Camera, spectra_of_block, L_of_block) -> np.ndarray:
        """irfft(spectra · L) of every block, placed on the camera's model grid ``(n, m1-m0)``."""
        pt = self.pt
        grid = None
        for b, L in zip(c.blocks, L_of_block):
            S = spectra_of_block(b.j)
            conv = scipy.fft.irfft(np.atleast_2d(S[..., :L.shape[-1]] * L), pt.nfft, axis=1)
            if grid is None:
                grid = np.zeros((conv.shape[0], c.m1 - c.m0))
            w0 = b.j * pt.block - pt.K                     # window pixel 0 on the template grid
            grid[:, b.o0 - c.m0:b.o1 - c.m0] = conv[:, b.o0 - w0:b.o1 - w0]
        return grid

    def _factor(self, c: _Camera, mp, tau, sel=slice(None)) -> np.ndarray:
        """Multiplicative polynomial × attenuation on camera ``c``'s pixels ``sel``."""
        x = c.x[sel]
        fac = legendre.legval(x, np.concatenate(([1.0], mp))) if self.mdegree else np.ones(x.size)
        if self.dust:
            fac = fac * np.exp(-tau * c.kdust[sel])
        return fac

    def evaluate(self, theta) -> dict:
        """Solve the linear problem at ``theta``; returns (and caches) the state."""
        key = np.asarray(theta, dtype=np.float64).tobytes()
        if self._state is not None and self._state["key"] == key:
            return self._state
        v, s, h3, h4, mp, tau = self._split(theta)
        cols, factors, losvd, clipped, parts = [], [], [], False, []
        for c in self.cameras:
            Ls = [self._losvd(v, s, h3, h4, b.var) for b in c.blocks]
            clipped |= any(cl and c.good[(c.centres >= b.o0) & (c.centres < b.o1)].any()
                           for (_, _, cl), b in zip(Ls, c.blocks))
            losvd.append(Ls)
            grid = self._convolve(c, self._block_fft, [L for L, _, _ in Ls])
            col = self._camera_columns(c, grid, full=False)                   # (P, n_good_c)
            fac = self._factor(c, mp, tau, c.good)
            cols.append(col)
            factors.append(fac)
            parts.append(col * (fac * c.sw[c.good]))
        At = np.concatenate(parts, axis=1)                                    # (P_s, n_good)
        ws, a, AQ, G, rhs, fit = self._linear_optimum(At)
        if self._sub is None:
            w = ws
        else:
            w = np.zeros(self.pt.P)
            w[self._sub] = ws
        self.n_eval += 1
        self._state = dict(key=key, theta=np.array(theta, dtype=np.float64), w=w, ws=ws, a=a, At=At,
                           AQ=AQ, G=G, rhs=rhs, cols=cols, factors=factors, losvd=losvd,
                           resid=self.y - fit, clipped=clipped)
        return self._state

    def _linear_optimum(self, At):
        """The exact linear part at fixed kinematics: template weights ``w ≥ 0`` (NNLS on
        the Gram matrix with the additive polynomials ``Q`` projected out) and polynomial
        coefficients ``a`` for the weighted columns ``At (P_s, n_good)``.  Returns
        ``(w, a, AQ, G, rhs, fit)``: also ``AQ = At Q``, the projected Gram matrix and
        right-hand side, and the fitted weighted model."""
        Q, y = self.Q, self.y
        AQ = At @ Q
        yQ = Q.T @ y
        G = At @ At.T - AQ @ AQ.T
        rhs = At @ y - AQ @ yQ
        w = self._nnls(G, rhs)
        a = yQ - AQ.T @ w
        return w, a, AQ, G, rhs, w @ At + Q @ a

    def kkt_gaps(self, theta) -> np.ndarray:
        """``(P_s,)`` NNLS multipliers ``(Gw − c)_j / ‖A_j‖`` of the templates in use at
        ``theta`` (0 on the active ones): how far each inactive template is from entering
        the fit, in units of the residual's correlation with it (data units × √ivar)."""
        st = self.evaluate(theta)
        lam = st["G"] @ st["ws"] - st["rhs"]
        norm = np.sqrt(np.clip(np.diag(st["G"]), 1e-300, None))
        out = lam / norm
        out[st["ws"] > 0] = 0.0
        return out

    def _nnls(self, G, c) -> np.ndarray:
        """NNLS ``min ½wᵀGw − cᵀw, w ≥ 0``, first from the previous active set.

        Between nearby evaluations the active set rarely changes: solve on it, and
        keep the answer only if it is a KKT point (weights > 0, every inactive
        multiplier ``(Gw − c)_j ≥ −tol``); otherwise :func:`nnls_on_gram`."""
        w, self._active = nnls_on_gram_warm(G, c, self._active, max_pivot_ratio=1e4)
        return w

    def residual(self, theta) -> np.ndarray:
        """Weighted residual ``(n_good,)`` of the exact linear optimum at ``theta``."""
        return self.evaluate(theta)["resid"]

    def jacobian(self, theta) -> np.ndarray:
        """Kaufman variable-projection Jacobian ``(n_good, n_params)`` at ``theta``."""
        st = self.evaluate(theta)
        w = st["ws"]
        v, s, h3, h4, mp, tau = self._split(theta)
        rows = []
        for ci, c in enumerate(self.cameras):
            comb = {}                                   # Σ_p w_p T̂_p per block

            def combined(j, comb=comb):
                if j not in comb:
                    comb[j] = w @ self._block_fft(j)
                return comb[j]
            dgrid = self._convolve(c, combined, [d[:self.moments] for _, d, _ in st["losvd"][ci]])
            sw = c.sw[c.good]
            fac = st["factors"][ci]
            base = w @ st["cols"][ci]                                            # (n_good_c,)
            parts = [self._camera_columns(c, dgrid, full=False) * (fac * sw)]
            if self.mdegree:
                dfac = legendre.legvander(c.x[c.good], self.mdegree)[:, 1:].T    # (mdegree, n_good_c)
                if self.dust:
                    dfac = dfac * np.exp(-tau * c.kdust[c.good])
                parts.append(dfac * (base * sw))
            if self.dust:
                parts.append((-c.kdust[c.good] * fac * base * sw)[None, :])
            rows.append(np.concatenate(parts, axis=0))
        D = np.concatenate(rows, axis=1).T                                        # (n_good, n_params)
        Q = self.Q
        D -= Q @ (Q.T @ D)
        act = np.flatnonzero(w > 0)
        if act.size:
            Aa = st["At"][act].T - Q @ st["AQ"][act].T                           # (n_good, n_act)
            Qa = np.linalg.qr(Aa)[0]
            D -= Qa @ (Qa.T @ D)
        return -D

    def models(self, theta) -> list[np.ndarray]:
        """Best-fit continuum at ``theta`` on every camera's pixels (data units), NaN where
        the templates do not reach."""
        st = self.evaluate(theta)
        w = st["ws"]
        v, s, h3, h4, mp, tau = self._split(theta)
        coef = solve_triangular(self.Rq, st["a"]) if self.degree >= 0 else None
        out = []
        for ci, c in enumerate(self.cameras):
            grid = self._convolve(c, lambda j: w @ self._block_fft(j),
                                  [L for L, _, _ in st["losvd"][ci]])
            m = self._factor(c, mp, tau) * self._camera_columns(c, grid, full=True)[0]
            if coef is not None:
                m = m + legendre.legval(c.x, coef)
            out.append(np.where(c.valid, m, np.nan))
        return out

    def basis(self, theta) -> list[np.ndarray]:
        """Per camera ``(npix, P_s)``: every template in use, at the non-linear parameters
        ``theta``, on all of the camera's pixels — LOSVD, binning, resolution,
        multiplicative polynomial and attenuation applied (the columns the weights
        multiply); NaN where the templates do not reach."""
        v, s, h3, h4, mp, tau = self._split(theta)
        out = []
        for c in self.cameras:
            Ls = [self._losvd(v, s, h3, h4, b.var)[0] for b in c.blocks]
            cols = self._camera_columns(c, self._convolve(c, self._block_fft, Ls), full=True)
            m = (cols * self._factor(c, mp, tau)).T
            m[~c.valid] = np.nan
            out.append(m)
        return out

    def additive_basis(self) -> list[np.ndarray]:
        """Per camera ``(npix, degree + 1)``: the additive Legendre polynomials (no
        column when ``degree < 0``)."""
        return [legendre.legvander(c.x, self.degree) if self.degree >= 0 else np.zeros((c.npix, 0))
                for c in self.cameras]

    def light_per_weight(self) -> np.ndarray:
        """``(P,)`` model flux of a unit weight of each template summed over the fitted
        pixels (data units), at the last evaluated parameters (all templates in use)."""
        if self._sub is not None:
            raise ValueError("light_per_weight needs every template: call set_subset(None) first")
        st = self._state
        return sum((col * fac).sum(axis=1) for col, fac in zip(st["cols"], st["factors"]))
