"""Matrix-free LOSVD operator ``A`` and its adjoint (docs/fitting.md).

The model of the global fit (docs/data-model.md) is, for spaxel ``s`` and observed pixel ``l``,

    (A x)[s, l] = Σ_c g[s,c] · (R (h_sc ⊛ M_c))[l],        M = X T,  X = x.reshape(C, P)

with templates ``T (P, T)``, unit-area LOSVD kernels ``h_sc`` on template pixels,
column scales ``g (S, C)`` (:func:`cubefit.losvd.norm_factors`) and the sparse
exact-overlap rebin ``R (L, T)``.  :class:`LOSVDOperator` applies ``A`` and ``Aᵀ``
without materialising the ``(S, C, P, L)`` hypercube:

* forward: ``M = X T`` (one ``(C×P)·(P×T)`` product), ``M̂ = rfft(M)`` (``C`` FFTs of
  length ``nfft = fft_length(T, K)``), per spaxel ``Ẑ_s = Σ_c g ĥ_sc ⊙ M̂_c``
  (``S·C·F`` complex multiply-adds, ``F = nfft//2 + 1``), ``S`` inverse FFTs cropped to
  ``T`` pixels, sparse rebin;
* adjoint: ``v_s = Rᵀ r_s``, ``V̂_s = rfft(pad(v_s))``, ``Ĝ_c = Σ_s g conj(ĥ_sc) ⊙ V̂_s``,
  ``G = crop(irfft(Ĝ))``, ``∇ = G Tᵀ`` — the same cost.

Why the adjoint is exact: with zero padding to ``nfft``, the forward map of one
component is ``M_c ↦ crop_T(circconv(pad(M_c), h_sc))``.  The adjoint of a circular
convolution with a real kernel is the circular correlation with it, whose spectrum is
``conj(ĥ) ⊙ V̂``; the adjoint of the zero pad is the crop and vice versa.  Both the
correlation and the convolution are real signals computed through their (Hermitian)
half spectra, so no real-FFT weighting enters: the dot test holds to rounding.

The weighted system
-------------------
The objective ``f(x) = ½ Σ_s Σ_l m_l w_l ι[s,l] (Y[s,l] − (A x)[s,l])²`` is written as
``½‖Ã x − ỹ‖²`` with row scales ``d[s,l] = sqrt(m_l w_l ι[s,l])``, ``Ã = diag(d) A`` and
``ỹ = d ⊙ Y`` (``m`` mask, ``w`` λ-weights, ``ι`` inverse variance; absent ones are 1).
:meth:`LOSVDOperator.matvec` / :meth:`~LOSVDOperator.rmatvec` /
:meth:`~LOSVDOperator.as_linear_operator` are the *weighted* ``Ã`` of shape
``(S·L, C·P)``, rows ordered ``s·L + l`` and columns ``c·P + p`` (docs/data-model.md);
:meth:`~LOSVDOperator.model` is the unweighted ``A x`` as ``(S, L)`` for reconstruction.

Kernel spectra ``g[s,c]·ĥ_sc`` are computed per tile of spaxels and kept for the
following applies while the cache fits in ``memory_budget``; tiles beyond it are
recomputed at every apply (same code, bit-identical results).

Backends
--------
The applies run on a :class:`cubefit.backend.Backend`: numpy + :mod:`scipy.fft` + a
sparse rebin by default, or an Array API library (CuPy, PyTorch) on a GPU, where the
kernel spectra, FFTs and the rebin live on the device and only ``x (C·P,)`` and the
residuals ``(S·L,)`` cross to the host.  Explicit columns and their products
(:meth:`LOSVDOperator.gram`, :meth:`~LOSVDOperator.column_energy`) are formed on the
device too; only the ``(k, k)`` Gram block, the energies or the requested columns
(:meth:`~LOSVDOperator.columns`) come back.

Layout: the applies and row blocks are here; the tile plan and the kernel-spectra cache
in :mod:`cubefit.operator_tiles`; explicit columns, Gram blocks and column energy in
:mod:`cubefit.operator_columns` (mixins of :class:`LOSVDOperator`, each readable and
replaceable alone).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from .backend import get_backend
from .operator_columns import ExplicitColumns
from .operator_tiles import KernelSpectraCache
from .grids import check_log_grid, edges_from_centres, rebin_matrix
from .losvd import (AMP_MODES, NORM_MODES, check_losvd, check_vel_grid, fft_length,
                    kernel_half_width, losvd_amplitudes, norm_factors)

__all__ = ["LOSVDOperator", "DEFAULT_MEMORY_BUDGET"]

DEFAULT_MEMORY_BUDGET = 2 * 1024**3
"""Default bytes the operator may hold: cached kernel spectra plus per-tile work arrays."""

_DTYPES = {np.dtype(np.float64): np.dtype(np.complex128), np.dtype(np.float32): np.dtype(np.complex64)}


def _as_float(name, a, shape, dtype=np.float64, fix=""):
    """``a`` as a finite float array of ``shape``; ``ValueError`` naming ``name`` otherwise."""
    arr = np.asarray(a)
    if arr.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {arr.shape}{fix}")
    arr = arr.astype(dtype, copy=False)
    if not np.all(np.isfinite(arr)):
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
        raise ValueError(f"{name}: expected finite values, got {int(np.sum(~np.isfinite(arr)))} "
                         f"non-finite (first at index {idx})")
    return arr


def _non_negative(name, arr):
    if np.any(arr < 0):
        idx = tuple(int(i) for i in np.argwhere(arr < 0)[0])
        raise ValueError(f"{name}: expected non-negative values, got {int(np.sum(arr < 0))} "
                         f"negative (first at index {idx}, minimum {float(arr.min()):.6g})")


class LOSVDOperator(KernelSpectraCache, ExplicitColumns):
    """The weighted model operator ``Ã = diag(d) A`` of the global fit, matrix-free.

    Parameters
    ----------
    templates : ``(P, T)`` template spectra on ``tem_pix``.
    tem_pix : ``(T,)`` ln λ of the template pixel centres (uniform).
    obs_pix : ``(L,)`` ln λ of the observed pixel centres (uniform, step ≥ template step).
    vel_pix : ``(V,)`` LOSVD bin centres, km/s.
    losvd : ``(S, V, C)`` non-negative LOSVD histograms.
    R : sparse ``(L, T)`` rebin matrix (``/R_T``); default :func:`cubefit.grids.rebin_matrix`.
    norm_mode : ``"model"`` (``g = a``) or ``"data"`` (``g = F·a/Σ_c a``), docs/data-model.md.
    amp_mode : ``"sum"`` or ``"trapz"``: LOSVD amplitude ``a[s,c]``.
    data_flux : ``(S,)`` ``F[s]`` for ``norm_mode="data"``; default: mean of ``datacube``
        over unmasked pixels.  Must be finite and positive where a spaxel has a model.
    datacube : ``(S, L)`` observed spectra ``Y``, needed by :meth:`weighted_data` and
        :meth:`rhs` (and for the default ``data_flux``).
    mask : ``(L,)`` bool, True = use the pixel (default all).
    lambda_weights : ``(L,)`` λ-weights ``w ≥ 0`` (default 1).
    ivar : ``(S, L)`` inverse variance ``ι ≥ 0`` (default 1).
    dtype : ``float64`` or ``float32``: precision of every apply (float32 halves the
        cache and the memory traffic; accumulations stay in that precision).
    memory_budget : bytes for cached kernel spectra plus each worker's work arrays
        (one tile's spectra when they are not cached, FFT buffers); see :attr:`cache_info`.
    tile : spaxels per tile (default: chosen from the budget, at most 64 on numpy and
        all spaxels on a device backend).
    workers : threads that process spaxel tiles concurrently (numpy, BLAS and FFT
        calls release the GIL, so 2 threads use 2 cores); 1 on a device backend.
    backend, device : where the applies run (:func:`cubefit.backend.get_backend`):
        ``"numpy"`` (default), ``"cupy"``, ``"torch"`` or ``"array_api_strict"``; on a
        device backend ``memory_budget`` counts device memory.

    Attributes: sizes ``S, C, P, L, T``, kernel half-width ``K``, FFT length ``nfft``
    and ``F = nfft//2 + 1``; ``shape = (S·L, C·P)``; LOSVD amplitudes ``amp (S, C)``
    and column scales ``g (S, C)``; ``data_flux (S,)`` (``norm_mode="data"``).
    """

    def __init__(self, templates, tem_pix, obs_pix, vel_pix, losvd, R=None, *,
                 norm_mode: str = "model", amp_mode: str = "sum", data_flux=None, datacube=None,
                 mask=None, lambda_weights=None, ivar=None, dtype=np.float64,
                 memory_budget: int = DEFAULT_MEMORY_BUDGET, tile: int | None = None,
                 workers: int = 1, backend="numpy", device=None):
        self.dtype = np.dtype(dtype)
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype: expected float64 or float32, got {self.dtype}")
        self.cdtype = _DTYPES[self.dtype]
        if norm_mode not in NORM_MODES:
            raise ValueError(f"norm_mode: expected one of {NORM_MODES}, got {norm_mode!r}")
        if amp_mode not in AMP_MODES:
            raise ValueError(f"amp_mode: expected one of {AMP_MODES}, got {amp_mode!r}")
        self.norm_mode, self.amp_mode = norm_mode, amp_mode

        tem_pix = np.asarray(tem_pix, dtype=np.float64)
        obs_pix = np.asarray(obs_pix, dtype=np.float64)
        self.dlog_t = check_log_grid(tem_pix, "tem_pix")
        check_log_grid(obs_pix, "obs_pix")
        vel_pix = np.asarray(vel_pix, dtype=np.float64)
        check_vel_grid(vel_pix, "vel_pix")
        H = np.asarray(losvd)
        if H.ndim != 3 or H.shape[1] != vel_pix.size:
            raise ValueError(f"losvd: expected (S, V, C) with V = len(vel_pix) = {vel_pix.size}, "
                             f"got shape {H.shape}")
        check_losvd(H, vel_pix, "losvd", axis=1)
        S, _, C = H.shape
        T, L = tem_pix.size, obs_pix.size
        Tm = np.asarray(templates)
        if Tm.ndim != 2 or Tm.shape[1] != T:
            raise ValueError(f"templates: expected (P, T) with T = len(tem_pix) = {T}, got shape "
                             f"{Tm.shape}")
        Tm = _as_float("templates", Tm, Tm.shape)
        P = Tm.shape[0]
        self.S, self.C, self.P, self.L, self.T = S, C, P, L, T
        self.K = kernel_half_width(vel_pix, self.dlog_t)
        self._check_coverage(tem_pix, obs_pix)
        self.nfft = fft_length(T, self.K)
        self.F = self.nfft // 2 + 1
        self.shape = (S * L, C * P)

        if R is None:
            R = rebin_matrix(tem_pix, obs_pix)
        if not sp.issparse(R) or R.shape != (L, T):
            raise ValueError(f"R: expected a sparse (L, T) = ({L}, {T}) rebin matrix, got "
                             f"{type(R).__name__} of shape {getattr(R, 'shape', None)}; "
                             "build it with cubefit.grids.rebin_matrix(tem_pix, obs_pix)")
        self._R = sp.csr_matrix(R, dtype=self.dtype)
        self._be = be = get_backend(backend, device)
        self._rebin = be.rebin(self._R, self.dtype)                 # z (T, k) ↦ R z (L, k)
        self._rebin_t = be.rebin(self._R.T.tocsr(), self.dtype)     # u (L, k) ↦ Rᵀ u (T, k)

        m = np.ones(L, bool) if mask is None else np.asarray(mask)
        if m.shape != (L,) or m.dtype != bool:
            raise ValueError(f"mask: expected ({L},) booleans (True = use), got {m.dtype} of shape "
                             f"{m.shape}")
        w2 = m.astype(np.float64)
        if lambda_weights is not None:
            w = _as_float("lambda_weights", lambda_weights, (L,))
            _non_negative("lambda_weights", w)
            w2 = w2 * w
        w2 = np.broadcast_to(w2, (S, L))
        if ivar is not None:
            iv = _as_float("ivar", ivar, (S, L), fix=" (inverse variance per spaxel and pixel)")
            _non_negative("ivar", iv)
            w2 = w2 * iv
        self.mask = m
        self._d = np.sqrt(w2).astype(self.dtype)

        self._Y = None
        if datacube is not None:
            self._Y = _as_float("datacube", datacube, (S, L))

        amp = losvd_amplitudes(H, vel_pix, amp_mode, axis=1)
        if norm_mode == "data":
            data_flux = self._data_flux(data_flux, amp)
        self.amp = amp
        self.g = norm_factors(amp, norm_mode, data_flux)
        self.data_flux = data_flux
        self._H, self._vel = H, vel_pix

        self._templates = Tm.astype(self.dtype)
        self._That = None          # rfft of the templates, made on first use by the column blocks
        self._templates_dev = be.asarray(self._templates)
        self._d_dev = be.asarray(self._d)
        self.workers = max(1, int(workers)) if be.is_numpy else 1
        self._plan_tiles(int(memory_budget), tile)

    # -- construction helpers ----------------------------------------------------------
    @classmethod
    def from_h5(cls, path, *, norm_mode: str = "model", amp_mode: str = "sum",
                lambda_weights="auto", use_ivar: bool = True, config=None, spaxels: slice | None = None,
                **kwargs) -> "LOSVDOperator":
        """Operator of a populated file (:func:`cubefit.store.read_inputs`).

        ``lambda_weights``: ``"auto"`` uses the file's λ-weights dataset
        (``Config.lambda_weights_dset``) when present and ``Config.lambda_weights_enable``,
        ``None`` disables them, an ``(L,)`` array overrides them.  ``use_ivar``: weight
        by ``1/Noise²`` when ``/Noise`` is stored.  ``spaxels``: a slice of spaxels, the
        operator of those rows only (what one process of a distributed fit reads and
        holds).  ``backend`` defaults to ``Config.backend`` (``CUBEFIT_BACKEND``).  Other
        keywords go to the constructor.
        """
        from .config import get_config
        from .h5io import check_unchanged, file_state
        from .store import open_h5, read_inputs

        cfg = config or get_config()
        kwargs.setdefault("backend", cfg.backend)
        if isinstance(lambda_weights, str) and lambda_weights != "auto":
            raise ValueError(f"lambda_weights: expected 'auto', None or an (L,) array, got "
                             f"{lambda_weights!r}")
        state = file_state(path, cfg)          # the inputs and weights must not change meanwhile
        inp = read_inputs(path, config=cfg, spaxels=spaxels)
        if isinstance(lambda_weights, str):
            lambda_weights = None
            if cfg.lambda_weights_enable:
                with open_h5(path, "r", config=cfg) as f:
                    if cfg.lambda_weights_dset in f:
                        lambda_weights = f[cfg.lambda_weights_dset][...]
        check_unchanged(path, state, "LOSVDOperator.from_h5", cfg)
        return cls(inp.templates, inp.tem_pix, inp.obs_pix, inp.vel_pix, inp.losvd, inp.R,
                   norm_mode=norm_mode, amp_mode=amp_mode, data_flux=inp.data_flux,
                   datacube=inp.datacube, mask=inp.mask, lambda_weights=lambda_weights,
                   ivar=inp.ivar if use_ivar else None, **kwargs)

    def _check_coverage(self, tem_pix, obs_pix):
        """docs/data-model.md: templates must reach K pixels beyond the observed range on each side."""
        te, oe = edges_from_centres(tem_pix), edges_from_centres(obs_pix)
        margin = self.K * self.dlog_t * (1 - 1e-9)
        short_lo = (te[0] + margin) - oe[0]
        short_hi = oe[-1] - (te[-1] - margin)
        if short_lo > 0 or short_hi > 0:
            need = max(short_lo, short_hi) / self.dlog_t
            raise ValueError(f"tem_pix: the template grid must extend {self.K} pixels (the LOSVD "
                             f"kernel half-width) beyond the observed range on each side; it is "
                             f"short by {np.ceil(need):.0f} pixels; use templates covering "
                             f"[{np.exp(oe[0] - margin):.2f}, {np.exp(oe[-1] + margin):.2f}] Å")

    def _data_flux(self, data_flux, amp):
        if data_flux is None:
            if self._Y is None:
                raise ValueError("data_flux: norm_mode='data' needs data_flux (S,) "
                                 "(/HyperCube/data_flux) or datacube (S, L) to compute it")
            data_flux = self._Y[:, self.mask].mean(axis=1)
        F = np.asarray(data_flux, dtype=np.float64)
        if F.shape != (self.S,):
            raise ValueError(f"data_flux: expected ({self.S},), got shape {F.shape}")
        has_model = amp.sum(axis=1) > 0
        bad = np.flatnonzero(has_model & ~(np.isfinite(F) & (F > 0)))
        if bad.size:
            raise ValueError(f"data_flux: norm_mode='data' needs a finite positive flux for every "
                             f"spaxel with a model; spaxels {bad[:10].tolist()} have "
                             f"{F[bad[:10]].tolist()}; mask or drop those spaxels, or use "
                             "norm_mode='model'")
        return F

    @property
    def backend(self) -> str:
        """Name of the array backend the applies run on (:mod:`cubefit.backend`)."""
        return self._be.name

    # -- applies ------------------------------------------------------------------------
    def _x_matrix(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.shape not in ((self.C * self.P,), (self.C, self.P)):
            raise ValueError(f"x: expected ({self.C * self.P},) = C·P weights (or (C, P)), got "
                             f"shape {x.shape}")
        return x.reshape(self.C, self.P).astype(self.dtype, copy=False)

    def _mix_spectrum(self, x):
        """``M̂ (F, C, 1)``: the FFT of each component's template mix ``M = X T``."""
        be = self._be
        M = be.asarray(self._x_matrix(x)) @ self._templates_dev                     # (C, T)
        Mh = be.permute(be.rfft(M, self.nfft, -1), (1, 0))                         # (F, C)
        if be.is_numpy:                 # contiguous rows: numpy's batched matmul is faster
            Mh = np.ascontiguousarray(Mh)
        return Mh[:, :, None]

    def _tile_forward(self, Mh, i: int, weighted: bool):
        """Model of tile ``i``'s spaxels ``(St, L)`` on the backend, from :meth:`_mix_spectrum`."""
        be, xp = self._be, self._be.xp
        sl = self._tiles[i]
        Z = xp.matmul(self._spectra(i), Mh)[:, :, 0]                       # (F, St) Σ_c g ĥ M̂
        z = be.irfft(Z, self.nfft, 0)[:self.T, :]                          # (T, St) linear conv
        y = be.permute(self._rebin(z), (1, 0))                             # (St, L)
        return y * self._d_dev[sl, :] if weighted else y

    def _forward(self, x, weighted: bool) -> np.ndarray:
        be = self._be
        Mh = self._mix_spectrum(x)
        out = be.empty((self.S, self.L), self.dtype)

        def tile(i):
            out[self._tiles[i], :] = self._tile_forward(Mh, i, weighted)

        for _ in self._map_tiles(tile):
            pass
        return be.to_numpy(out)

    # -- row blocks (cubefit.solvers.problem.BlockOperator) ------------------------------
    @property
    def n_blocks(self) -> int:
        """Number of row blocks: the spaxel tiles."""
        return len(self._tiles)

    def row_block(self, i: int) -> slice:
        """Rows of ``Ã`` in block ``i``: spaxels ``tile_i`` × all ``L`` pixels, rows
        ``s·L + l``."""
        sl = self._tiles[int(i)]
        return slice(sl.start * self.L, sl.stop * self.L)

    def matvec_block(self, x, i: int) -> np.ndarray:
        """``(Ã x)[row_block(i)]``: the weighted model of block ``i``'s spaxels, ``(St·L,)``."""
        return self._be.to_numpy(self._tile_forward(self._mix_spectrum(x), int(i), True)).ravel()

    def rmatvec_block(self, r_i, i: int) -> np.ndarray:
        """``Ã[row_block(i)]ᵀ r_i`` as ``(C·P,)`` for ``r_i (St·L,)``; the sum over blocks is
        :meth:`rmatvec`."""
        i = int(i)
        sl = self._tiles[i]
        r_i = np.asarray(r_i)
        St = sl.stop - sl.start
        if r_i.shape not in ((St * self.L,), (St, self.L)):
            raise ValueError(f"r_i: expected ({St * self.L},) rows of block {i} (or ({St}, "
                             f"{self.L})), got shape {r_i.shape}")
        r = self._be.asarray(r_i.reshape(St, self.L), self.dtype)
        return self._adjoint_finish(self._tile_adjoint(r, i))

    def _tile_adjoint(self, r_tile, i: int):
        """``Σ_s conj(ĝĥ)·V̂`` of tile ``i`` as ``(F, C)`` for its residual rows ``(St, L)``."""
        be, xp = self._be, self._be.xp
        u = r_tile * self._d_dev[self._tiles[i], :]                          # (St, L)
        v = self._rebin_t(be.permute(u, (1, 0)))                            # (T, St) = Rᵀ u
        Vc = xp.conj(be.rfft(v, self.nfft, 0))                              # (F, St), zero pad
        # Σ_s conj(V̂) ĝĥ = conj(Σ_s conj(ĝĥ) V̂): one batched (1×St)·(St×C) per frequency.
        return xp.matmul(Vc[:, None, :], self._spectra(i))[:, 0, :]          # (F, C)

    def _adjoint_finish(self, Gh) -> np.ndarray:
        """``(C·P,)`` gradient from the summed per-tile spectra ``Gh (F, C)``."""
        be, xp = self._be, self._be.xp
        G = be.irfft(be.permute(xp.conj(Gh), (1, 0)), self.nfft, -1)[:, :self.T]   # (C, T)
        return be.to_numpy(xp.reshape(G @ be.permute(self._templates_dev, (1, 0)), (-1,)))

    def matvec(self, x) -> np.ndarray:
        """``Ã x`` as ``(S·L,)``: weighted model of ``x (C·P,)`` (row ``s·L + l``)."""
        return self._forward(x, weighted=True).ravel()

    def model(self, x) -> np.ndarray:
        """Unweighted model ``A x`` as ``(S, L)`` (data units), for reconstruction and residuals."""
        return self._forward(x, weighted=False)

    def rmatvec(self, r) -> np.ndarray:
        """``Ãᵀ r`` as ``(C·P,)`` for ``r (S·L,)`` or ``(S, L)`` in the weighted row space.

        The gradient of ``½‖Ã x − ỹ‖²`` is ``rmatvec(matvec(x) − weighted_data())``.
        """
        r = np.asarray(r)
        if r.shape not in ((self.S * self.L,), (self.S, self.L)):
            raise ValueError(f"r: expected ({self.S * self.L},) = S·L residuals (or (S, L)), got "
                             f"shape {r.shape}")
        be = self._be
        r = be.asarray(r.reshape(self.S, self.L), self.dtype)

        def tile(i):
            return self._tile_adjoint(r[self._tiles[i], :], i)

        Gh = None
        for part in self._map_tiles(tile):
            Gh = part if Gh is None else Gh + part
        return self._adjoint_finish(Gh)

    def weighted_data(self, datacube=None) -> np.ndarray:
        """``ỹ = d ⊙ Y`` as ``(S·L,)`` (default ``Y``: the ``datacube`` given at construction)."""
        Y = self._Y if datacube is None else _as_float("datacube", datacube, (self.S, self.L))
        if Y is None:
            raise ValueError("datacube: this operator was built without data; pass datacube= "
                             "(S, L) here or to the constructor")
        return (Y * self._d).ravel()

    @property
    def row_weights(self) -> np.ndarray:
        """Row scales ``d = sqrt(m w ι)`` as ``(S, L)``."""
        return self._d

    def rhs(self, datacube=None) -> np.ndarray:
        """``Ãᵀ ỹ (C·P,)`` — minus the gradient of the objective at ``x = 0``."""
        return self.rmatvec(self.weighted_data(datacube))

    def as_linear_operator(self) -> LinearOperator:
        """``Ã`` as a :class:`scipy.sparse.linalg.LinearOperator` of shape ``(S·L, C·P)``.

        Its dtype is the operator's (``float64`` or ``float32``); ``matvec`` and
        ``rmatvec`` are :meth:`matvec` and :meth:`rmatvec`.
        """
        # scipy may pass (n, 1) columns: flatten them.
        return LinearOperator(self.shape, matvec=lambda v: self.matvec(np.ravel(v)),
                              rmatvec=lambda v: self.rmatvec(np.ravel(v)), dtype=self.dtype)

    def __repr__(self) -> str:
        return (f"LOSVDOperator(S={self.S}, C={self.C}, P={self.P}, L={self.L}, T={self.T}, "
                f"K={self.K}, nfft={self.nfft}, norm={self.norm_mode!r}, amp={self.amp_mode!r}, "
                f"dtype={self.dtype}, tiles={len(self._tiles)}x{self.tile}, "
                f"cached={self._n_cached})")
