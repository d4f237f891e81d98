"""Forward model of emission lines on a spectrum's own pixels, with its analytic Jacobian.

Line ``k`` (rest vacuum wavelength ``λ_k``) of kinematic group ``g`` is a Gaussian in
``u = ln λ`` centred on ``μ_k = ln λ_k + ln(1+z) + v_g/c`` (``v`` relative to the
redshift, pPXF's convention) with width ``s_k = √((σ_g/c)² + s_inst²)``.  Its flux
density (per Å) averaged over pixel ``i`` with edges ``e_i < e_{i+1}`` (Å) is ::

    F_k · ½ [erf((ln e_{i+1} − μ_k)/(√2 s_k)) − erf((ln e_i − μ_k)/(√2 s_k))] / (e_{i+1} − e_i)

so the profile integrates to the flux ``F_k`` exactly, however narrow the line is
compared with a pixel.  The instrument then acts as follows:

* a camera with a resolution matrix (DESI): ``s_inst = 0`` and the pixel-integrated
  profile is multiplied by the camera's resolution matrix;
* a camera with a Gaussian FWHM (Å): ``s_inst = FWHM(λ_obs)/(2√(2 ln 2) λ_obs)`` is added
  in quadrature (``λ_obs`` the observed line centre);
* no resolution: ``s_inst = 0``.

``σ_g`` is therefore the intrinsic dispersion (instrument removed).  Pixel edges are
the mid-points between pixel centres (the outer edges half a step out).

Parameters ``θ`` (all real, in this order):

* ``A_j`` — the flux of every *free* line (10⁻¹⁷ erg/s/cm² for DESI fluxes);
* ``r_k`` — the ratio ``flux(k)/flux(partner)`` of every line with a bounded ratio;
* ``v_g``, ``σ_g`` (km/s) of every group with a line in the fit.

A tied line with a fixed ratio has ``F_k = ratio_k · A_partner``; with a bounded ratio
``F_k = r_k · A_partner``.  Each line's profile is evaluated only on the pixels where it
can matter for any allowed ``v`` and ``σ`` (a static window of ``|v| ≤ vshift_max``
plus ``6 s`` at ``σ_max``), which makes the Jacobian sparse with a fixed pattern:
each line's pixels depend on its own amplitude (and ratio) and on its group's ``v`` and ``σ``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.special import erf

from .. import C_KMS
from .data import FWHM_PER_SIGMA, Spectrum, air_to_vacuum
from .linelist import LineList

__all__ = ["LineModel", "pixel_edges", "WINDOW_SIGMAS"]

WINDOW_SIGMAS = 6.0
"""Half width of a line's evaluation window in units of its largest allowed width."""

_SQRT2 = math.sqrt(2.0)
_SQRTPI = math.sqrt(math.pi)


def pixel_edges(wave: np.ndarray) -> np.ndarray:
    """Pixel edges (Å, ``npix + 1``) from pixel centres: mid-points, outer ones half a step out."""
    w = np.asarray(wave, dtype=np.float64)
    return np.concatenate(([1.5 * w[0] - 0.5 * w[1]], 0.5 * (w[1:] + w[:-1]), [1.5 * w[-1] - 0.5 * w[-2]]))


@dataclass
class _Camera:
    wave: np.ndarray        # (npix,) vacuum observed Å
    edges: np.ndarray       # (npix+1,) Å
    y: np.ndarray           # (npix,) data minus continuum
    ivar: np.ndarray        # (npix,)
    band: np.ndarray | None  # resolution band or None
    fwhm: np.ndarray | None  # (npix,) Å or None


def _band_block(band: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
    """Sparse sub-block ``R[rows][:, cols]`` of a band-stored resolution matrix (layout of
    :mod:`cubefit.spectra.data`: ``R[i, j]`` at ``band[h - (j - i), j]``); ``rows`` and
    ``cols`` are contiguous ranges of pixel indices."""
    h = band.shape[0] // 2
    offs = np.arange(-h, h + 1)
    j = np.broadcast_to(cols[None, :], (offs.size, cols.size))
    i = j - offs[:, None]
    ok = (i >= rows[0]) & (i <= rows[-1])
    vals = band[(h - offs)[:, None].repeat(cols.size, axis=1)[ok], j[ok]]
    return sp.csr_matrix((vals, (i[ok] - rows[0], j[ok] - cols[0])), shape=(rows.size, cols.size))


def _usable_ivar(flux, ivar, cont) -> np.ndarray:
    """``ivar`` where flux and continuum are finite and ivar positive, else 0."""
    return np.where(np.isfinite(flux) & np.isfinite(cont) & (ivar > 0), ivar, 0.0)


class LineModel:
    """Lines of ``linelist`` on the cameras of ``spec``, fitted to ``flux − continuum``.

    Parameters
    ----------
    spec : the target (cameras with wave, flux, ivar, resolution; redshift ``z``).
    continuum : per camera ``(npix,)`` continuum model subtracted from the flux.
    linelist : the lines to model (broad groups included only if wanted).
    allow_absorption : amplitudes may be negative (else ``A ≥ 0``).
    min_pixels : a line needs at least this many unmasked pixels within ±3 of its
        starting widths of its centre to be fitted; otherwise it is dropped (and a
        line tied to it becomes free).

    Attributes after construction: ``lines`` (the fitted :class:`Line` objects, in
    list order), ``dropped`` (names of lines in the list not fitted, with a reason),
    ``param_names`` (``"A:<line>"``, ``"r:<line>"``, ``"v:<group>"``, ``"s:<group>"``),
    ``lower``/``upper`` bounds, ``x0`` a starting point (amplitudes 1), ``nrows`` the
    number of fitted pixels (unmasked pixels any line's window reaches).
    """

    def __init__(self, spec: Spectrum, continuum, linelist: LineList, *, allow_absorption: bool = False,
                 min_pixels: int = 3):
        if len(continuum) != len(spec.cameras):
            raise ValueError(f"continuum: expected one array per camera ({len(spec.cameras)}), got {len(continuum)}")
        self.z = float(spec.z)
        self.linelist = linelist
        self.cams: list[_Camera] = []
        for cam, cont in zip(spec.cameras, continuum):
            cont = np.asarray(cont, dtype=np.float64)
            if cont.shape != cam.flux.shape:
                raise ValueError(f"continuum of camera {cam.name!r}: shape {cont.shape}, expected {cam.flux.shape}")
            wave = air_to_vacuum(cam.wave) if spec.air else cam.wave
            ivar = _usable_ivar(cam.flux, cam.ivar, cont)
            y = np.where(ivar > 0, cam.flux - cont, 0.0)
            res = cam.resolution
            band = res.matrix if (res is not None and res.kind == "matrix") else None
            fwhm = res.fwhm if (res is not None and res.kind == "fwhm") else None
            self.cams.append(_Camera(wave, pixel_edges(wave), y, ivar, band, fwhm))
        self._select_lines(linelist, min_pixels)
        self._layout(allow_absorption)
        self._segments()

    # ------------------------------------------------------------------ set-up
    def _sinst(self, c: _Camera, lam_obs: float) -> float:
        if c.fwhm is None:
            return 0.0
        return float(np.interp(lam_obs, c.wave, c.fwhm)) / FWHM_PER_SIGMA / lam_obs

    def _select_lines(self, linelist: LineList, min_pixels: int) -> None:
        keep, self.dropped = [], {}
        for line in linelist:
            g = linelist.groups[line.group]
            lam = line.restwave * (1.0 + self.z)
            ngood, inside = 0, False
            for c in self.cams:
                if not (c.edges[0] < lam < c.edges[-1]):
                    continue
                inside = True
                s = math.hypot(g.sigma_init / C_KMS, self._sinst(c, lam))
                i = int(np.clip(np.searchsorted(c.wave, lam), 1, c.wave.size - 1))
                half = max(3.0 * s * lam, 1.5 * (c.wave[i] - c.wave[i - 1]))
                near = np.abs(c.wave - lam) <= half
                ngood += int(np.count_nonzero(c.ivar[near] > 0))
            if not inside:
                self.dropped[line.name] = "out of range"
            elif ngood < min_pixels:
                self.dropped[line.name] = f"{ngood} unmasked pixels at the line (< {min_pixels})"
            else:
                keep.append(line)
        self.lines = tuple(keep)

    def _layout(self, allow_absorption: bool) -> None:
        names = [line.name for line in self.lines]
        groups = []
        for line in self.lines:
            if line.group not in groups:
                groups.append(line.group)
        self.groups = tuple(groups)
        pn, lo, hi, x0 = [], [], [], []
        self.amp_of = np.zeros(len(self.lines), dtype=np.intp)     # parameter index of the line's amplitude
        self.ratio_of = np.full(len(self.lines), -1, dtype=np.intp)  # parameter index of its ratio, or -1
        self.fixed_coef = np.ones(len(self.lines))                  # fixed ratio (or 1)
        free = [k for k, line in enumerate(self.lines) if not (line.tied and line.partner in names)]
        amin = -np.inf if allow_absorption else 0.0
        for k in free:
            self.amp_of[k] = len(pn)
            pn.append(f"A:{self.lines[k].name}")
            lo.append(amin), hi.append(np.inf), x0.append(1.0)
        for k, line in enumerate(self.lines):
            if k in free:
                continue
            self.amp_of[k] = self.amp_of[names.index(line.partner)]
            if line.fixed_ratio:
                self.fixed_coef[k] = line.ratio
            else:
                self.ratio_of[k] = len(pn)
                pn.append(f"r:{line.name}")
                lo.append(line.ratio_min), hi.append(line.ratio_max), x0.append(line.ratio)
        self.n_amp = len(free)
        self.v_of, self.s_of = {}, {}
        for gname in self.groups:
            g = self.linelist.groups[gname]
            self.v_of[gname] = len(pn)
            pn.append(f"v:{gname}"), lo.append(-g.vshift_max), hi.append(g.vshift_max), x0.append(0.0)
            self.s_of[gname] = len(pn)
            pn.append(f"s:{gname}"), lo.append(g.sigma_min), hi.append(g.sigma_max), x0.append(g.sigma_init)
        self.param_names = tuple(pn)
        self.lower, self.upper, self.x0 = np.array(lo), np.array(hi), np.array(x0)
        self.line_group = np.array([self.groups.index(line.group) for line in self.lines], dtype=np.intp)
        self.v_idx = np.array([self.v_of[g] for g in self.groups], dtype=np.intp)
        self.s_idx = np.array([self.s_of[g] for g in self.groups], dtype=np.intp)

    def _segments(self) -> None:
        """Static windows: one segment per (line, camera) the line can reach."""
        seg_line, seg_cam, seg_sinst, seg_mu0 = [], [], [], []
        E, elo, ehi, dlam, wblocks = [], [], [], [], []
        ocam, opix, eseg = [], [], []
        ne = 0
        for k, line in enumerate(self.lines):
            g = self.linelist.groups[line.group]
            lam = line.restwave * (1.0 + self.z)
            for ci, c in enumerate(self.cams):
                sinst = self._sinst(c, lam)
                half = g.vshift_max / C_KMS + WINDOW_SIGMAS * math.hypot(g.sigma_max / C_KMS, sinst)
                i0 = int(np.searchsorted(c.edges, lam * math.exp(-half), side="right")) - 1
                i1 = int(np.searchsorted(c.edges, lam * math.exp(half), side="left"))
                i0, i1 = max(i0, 0), min(i1, c.wave.size)
                if i1 <= i0:
                    continue
                win = np.arange(i0, i1)
                if c.band is not None:
                    h = c.band.shape[0] // 2
                    out = np.arange(max(i0 - h, 0), min(i1 + h, c.wave.size))
                    wblocks.append(_band_block(c.band, out, win))
                else:
                    out = win
                    wblocks.append(sp.identity(win.size, format="csr"))
                seg = len(seg_line)
                seg_line.append(k), seg_cam.append(ci), seg_sinst.append(sinst)
                seg_mu0.append(math.log(lam))
                E.append(np.log(c.edges[i0:i1 + 1]))
                elo.append(ne + np.arange(win.size)), ehi.append(ne + 1 + np.arange(win.size))
                dlam.append(np.diff(c.edges[i0:i1 + 1]))
                ne += win.size + 1
                ocam.append(np.full(out.size, ci)), opix.append(out)
                eseg.append(np.full(win.size + 1, seg))
        self.nseg = len(seg_line)
        if self.nseg == 0:
            self.seg_line = np.zeros(0, dtype=np.intp)
            self.rows_cam, self.rows_pix = np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
            self.nrows = 0
            self.sqrtw, self.yw = np.zeros(0), np.zeros(0)
            return
        self.seg_line = np.array(seg_line, dtype=np.intp)
        self.seg_cam = np.array(seg_cam, dtype=np.intp)
        self.seg_sinst = np.array(seg_sinst)
        self.seg_mu0 = np.array(seg_mu0)
        self.E = np.concatenate(E)
        self.eseg = np.concatenate(eseg)
        self.elo, self.ehi = np.concatenate(elo), np.concatenate(ehi)
        self.dlam = np.concatenate(dlam)
        self.pseg = self.eseg[self.elo]
        self.G = sp.block_diag(wblocks, format="csr")
        self.ocam, self.opix = np.concatenate(ocam), np.concatenate(opix)
        self.oseg = np.repeat(np.arange(self.nseg), [b.shape[0] for b in wblocks])
        self.oline = self.seg_line[self.oseg]
        # Fitted rows: unmasked pixels reached by any window, camera by camera.
        good = np.zeros(self.ocam.size, dtype=bool)
        for ci, c in enumerate(self.cams):
            sel = self.ocam == ci
            good[sel] = c.ivar[self.opix[sel]] > 0
        key = self.ocam.astype(np.int64) * (1 << 32) + self.opix
        ukeys = np.unique(key[good])
        self.rows_cam = (ukeys >> 32).astype(np.intp)
        self.rows_pix = (ukeys & ((1 << 32) - 1)).astype(np.intp)
        self.nrows = ukeys.size
        self.orow = np.full(key.size, -1, dtype=np.intp)
        self.orow[good] = np.searchsorted(ukeys, key[good])
        self.sqrtw = np.sqrt(self._gather([c.ivar for c in self.cams]))
        self.yw = self.sqrtw * self._gather([c.y for c in self.cams])
        # Static Jacobian pattern over the entries that land on fitted rows.
        e = np.flatnonzero(self.orow >= 0)
        self._je = e
        k = self.oline[e]
        rows = self.orow[e]
        grp = self.line_group[k]
        withr = self.ratio_of[k] >= 0
        self._je_r = e[withr]
        self._jrows = np.concatenate([rows, rows[withr], rows, rows])
        self._jcols = np.concatenate([self.amp_of[k], self.ratio_of[k][withr], self.v_idx[grp], self.s_idx[grp]])

    # ------------------------------------------------------------------ evaluation
    @property
    def nparams(self) -> int:
        return len(self.param_names)

    def coefficients(self, theta) -> np.ndarray:
        """``F_k / A_partner`` for every fitted line: 1, the fixed ratio or the fitted one."""
        coef = self.fixed_coef.copy()
        has = self.ratio_of >= 0
        coef[has] = theta[self.ratio_of[has]]
        return coef

    def fluxes(self, theta) -> np.ndarray:
        """Flux ``F_k`` of every fitted line."""
        theta = np.asarray(theta, dtype=np.float64)
        return self.coefficients(theta) * theta[self.amp_of]

    def _widths(self, theta):
        v = theta[self.v_idx]
        sig = theta[self.s_idx]
        sg = self.line_group[self.seg_line]
        mu = self.seg_mu0 + v[sg] / C_KMS
        s = np.sqrt((sig[sg] / C_KMS) ** 2 + self.seg_sinst ** 2)
        return mu, s, sig[sg]

    def profiles(self, theta, derivatives: bool = True) -> np.ndarray:
        """Unit-flux profiles after the instrument on every window entry: columns
        ``[P, ∂P/∂μ, ∂P/∂s]`` (``(n_entries, 3)``, or ``(n_entries, 1)`` without derivatives)."""
        mu, s, _ = self._widths(theta)
        se = s[self.eseg]
        a = (self.E - mu[self.eseg]) / (_SQRT2 * se)
        half_erf = 0.5 * erf(a)
        p = (half_erf[self.ehi] - half_erf[self.elo]) / self.dlam
        if not derivatives:
            return self.G @ p[:, None]
        gauss = np.exp(-a * a) / _SQRTPI               # d(½ erf a)/da
        sp_ = s[self.pseg] * self.dlam
        dmu = -(gauss[self.ehi] - gauss[self.elo]) / (_SQRT2 * sp_)
        ga = gauss * a
        ds = -(ga[self.ehi] - ga[self.elo]) / sp_
        return self.G @ np.column_stack([p, dmu, ds])

    def residual(self, theta) -> np.ndarray:
        """``√ivar (model − (flux − continuum))`` on the fitted rows, ``(nrows,)``."""
        theta = np.asarray(theta, dtype=np.float64)
        Q = self.profiles(theta, derivatives=False)[:, 0]
        F = self.fluxes(theta)
        e = self._je
        m = np.bincount(self.orow[e], weights=F[self.oline[e]] * Q[e], minlength=self.nrows)
        return self.sqrtw * m - self.yw

    def _jacobian_values(self, theta) -> np.ndarray:
        """Values of the Jacobian at its static pattern ``(_jrows, _jcols)`` (duplicates add)."""
        theta = np.asarray(theta, dtype=np.float64)
        Q = self.profiles(theta)
        e = self._je
        k = self.oline[e]
        coef = self.coefficients(theta)
        A = theta[self.amp_of]
        F = coef * A
        _, s, sig = self._widths(theta)
        seg = self.oseg[e]
        w = self.sqrtw[self.orow[e]]
        er = self._je_r
        return np.concatenate([
            w * coef[k] * Q[e, 0],
            self.sqrtw[self.orow[er]] * A[self.oline[er]] * Q[er, 0],
            w * F[k] * Q[e, 1] / C_KMS,
            w * F[k] * Q[e, 2] * sig[seg] / (C_KMS ** 2 * s[seg]),
        ])

    def jacobian(self, theta) -> sp.csr_matrix:
        """Analytic Jacobian ``∂residual/∂θ`` as a sparse ``(nrows, nparams)`` CSR matrix."""
        return sp.csr_matrix((self._jacobian_values(theta), (self._jrows, self._jcols)),
                             shape=(self.nrows, self.nparams))

    def jacobian_dense(self, theta) -> np.ndarray:
        """The same Jacobian as a dense array (cheaper to build for small problems)."""
        flat = np.bincount(self._jrows * self.nparams + self._jcols, weights=self._jacobian_values(theta),
                           minlength=self.nrows * self.nparams)
        return flat.reshape(self.nrows, self.nparams)

    def with_data(self, spec: Spectrum, continuum) -> "LineModel":
        """This model (same lines, windows and pixels) fitted to another flux on the same
        cameras, wavelengths and ivar — a Monte-Carlo copy.  Raises ``ValueError`` if the
        cameras differ in anything but the flux."""
        if len(spec.cameras) != len(self.cams):
            raise ValueError("with_data: the spectrum has a different number of cameras")
        new = object.__new__(LineModel)
        new.__dict__.update(self.__dict__)
        new.cams = []
        for cam, cont, c in zip(spec.cameras, continuum, self.cams):
            cont = np.asarray(cont, dtype=np.float64)
            if cam.ivar.shape != c.ivar.shape or not np.array_equal(_usable_ivar(cam.flux, cam.ivar, cont), c.ivar):
                raise ValueError(f"with_data: camera {cam.name!r} has other pixels or ivar")
            y = np.where(c.ivar > 0, cam.flux - cont, 0.0)
            new.cams.append(_Camera(c.wave, c.edges, y, c.ivar, c.band, c.fwhm))
        if self.nrows:
            new.yw = self.sqrtw * new._gather([c.y for c in new.cams])
        return new

    def _gather(self, per_camera) -> np.ndarray:
        """Values of per-camera pixel arrays on the fitted rows, ``(nrows,)``."""
        return np.concatenate([np.asarray(a)[self.rows_pix[self.rows_cam == ci]] for ci, a in enumerate(per_camera)])

    def amplitude_design(self, theta) -> np.ndarray:
        """Weighted design matrix of the amplitudes at fixed kinematics and ratios,
        ``(nrows, n_amp)``: ``residual = D A − √ivar·y``."""
        theta = np.asarray(theta, dtype=np.float64)
        Q = self.profiles(theta, derivatives=False)[:, 0]
        e = self._je
        k = self.oline[e]
        D = np.zeros((self.nrows, self.n_amp))
        np.add.at(D, (self.orow[e], self.amp_of[k]), self.coefficients(theta)[k] * Q[e])
        return D * self.sqrtw[:, None]

    def camera_models(self, theta, per_line: bool = False):
        """The line model on every pixel of every camera (masked ones included):
        a list of ``(npix,)`` arrays; with ``per_line`` also a list of ``(nlines, npix)``."""
        theta = np.asarray(theta, dtype=np.float64)
        out = [np.zeros(c.wave.size) for c in self.cams]
        lines = [np.zeros((len(self.lines), c.wave.size)) for c in self.cams] if per_line else None
        if self.nseg:
            Q = self.profiles(theta, derivatives=False)[:, 0]
            contrib = self.fluxes(theta)[self.oline] * Q
            for ci in range(len(self.cams)):
                sel = self.ocam == ci
                out[ci] = np.bincount(self.opix[sel], weights=contrib[sel], minlength=out[ci].size)
                if per_line:
                    np.add.at(lines[ci], (self.oline[sel], self.opix[sel]), contrib[sel])
        return (out, lines) if per_line else out

    def amplitude_columns(self, theta) -> list[np.ndarray]:
        """Per camera ``(npix, n_amp)``: the model of each free amplitude at unit value
        (its tied lines included), kinematics and ratios from ``theta``, on every pixel."""
        theta = np.asarray(theta, dtype=np.float64)
        cols = [np.zeros((c.wave.size, self.n_amp)) for c in self.cams]
        if self.nseg:
            Q = self.profiles(theta, derivatives=False)[:, 0]
            vals = self.coefficients(theta)[self.oline] * Q
            amp = self.amp_of[self.oline]
            for ci in range(len(self.cams)):
                sel = self.ocam == ci
                np.add.at(cols[ci], (self.opix[sel], amp[sel]), vals[sel])
        return cols
