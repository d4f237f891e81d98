"""Reconstruction ``Ŷ = A x`` from the materialised hypercube or the matrix-free operator.

``Ŷ[s, l] = Σ_c Σ_p A[s, c, p, l] · x[c, p]`` with ``A = /HyperCube/models (S, C, P, L)``
and ``x`` the solution flattened row-major ``(C, P)`` → ``c·P + p`` (``/X_global``).
The cube is read tile by tile (its chunks), only for the S-tiles holding the
requested spaxels and only for the (C, P) tiles where ``x`` has a non-zero weight,
so a sparse solution touches a small part of the cube.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
from pathlib import Path

import numpy as np

from .config import Config, get_config
from .hypercube import MODELS, TileGrid, cube_status, check_spaxels, require_complete
from .h5io import check_unchanged, edit_h5, state_of
from .locking import FileBusyError, describe_holder, lock_holder, writer_lock
from .provenance import file_fingerprint, x_sha256
from .store import SCHEMA, open_h5, write_dataset

log = logging.getLogger(__name__)

__all__ = ["reconstruct", "check_output_name"]

_PROTECTED = frozenset("/" + k.strip("/").split("/")[0] for k in SCHEMA if k != "/ModelCube")
"""Top-level names of the file's inputs and of other stages' results (every dataset
and group of :data:`cubefit.store.SCHEMA` but ``/ModelCube``), which a reconstruction
must never replace."""


def check_output_name(f, out: str) -> str:
    """The absolute dataset name ``out`` if a reconstruction may be written there, else a
    ``ValueError`` that names the fix.

    Allowed: ``/ModelCube`` and new names outside the file's inputs and the other
    stages' results (``/DataCube``, ``/X_global``, ``/HyperCube/...``, ``/Fit/...``, …);
    an existing dataset only if an earlier reconstruction wrote it (it has the
    ``x_sha256`` attribute).
    """
    name = "/" + str(out).strip().strip("/")
    if name == "/":
        raise ValueError(f"out={out!r}: expected a dataset name such as /ModelCube")
    top = "/" + name.strip("/").split("/")[0]
    if name != "/ModelCube" and top in _PROTECTED:
        what = SCHEMA.get(name, SCHEMA.get(top, ("", "a group of another stage")))[1]
        raise ValueError(f"out={name}: that is {what}, not a place for a reconstruction; write "
                         f"it to /ModelCube (the default) or a new name such as /ModelCube_2 "
                         f"(cubefit recon --out /ModelCube_2)")
    if name in f and not (hasattr(f[name], "attrs") and "x_sha256" in f[name].attrs):
        raise ValueError(f"out={name}: the file already has {name} and a reconstruction did not "
                         f"write it; choose a new name (cubefit recon --out /ModelCube_2)")
    return name



def _weights(x, C: int, P: int) -> np.ndarray:
    X = np.asarray(x, dtype=np.float64)
    if X.size != C * P or X.ndim not in (1, 2) or (X.ndim == 2 and X.shape != (C, P)):
        raise ValueError(f"x: expected (C*P,) = ({C * P},) or (C, P) = ({C}, {P}) weights, got shape "
                         f"{X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("x: expected finite weights, got NaN or inf")
    return X.reshape(C, P)


def reconstruct(h5, x, out: str | None = None, spaxels=None, *,
                config: Config | None = None) -> np.ndarray:
    """Model spectra ``Ŷ = A x``: ``(S, L)``, or ``(n, L)`` for ``spaxels`` (in that order).

    Parameters
    ----------
    h5 : a populated file.  With a complete ``/HyperCube/models`` in the fit's
        normalisation the columns are read from it; otherwise the matrix-free operator computes them in the fit's
        normalisation (``/Fit`` settings, else the cube's, else "data").
    x : ``(C·P,)`` or ``(C, P)`` population weights.
    out : dataset to write the result to (e.g. ``"/ModelCube"``), with units, the
        spaxel list, the SHA-256 of ``x`` (``x_sha256``) and the file's
        ``inputs_fingerprint`` as attributes; None only returns it.  Never an input or
        another stage's result (:func:`check_output_name`).
    spaxels : spaxel indices; default all.

    Returns the float64 array in every case.
    """
    cfg = config or get_config()
    path = Path(h5)
    # Writing into the file makes this a writer: it holds the lock while it reads too.
    with writer_lock(path, "reconstruct", config=cfg) if out is not None else contextlib.nullcontext():
        with open_h5(path, "r", config=cfg) as f:
            if out is not None:
                out = check_output_name(f, out)
            state = state_of(f, cfg)
            # A cube converted to the other normalisation after the fit no longer matches x.
            st = cube_status(f) if MODELS in f else None
            use_cube = st is not None and st.complete and not st.stale \
                and st.settings.get("norm.mode") == fit_modes(f)[0]
            fingerprint = file_fingerprint(f)
            units = f["/DataCube"].attrs.get("units", SCHEMA["/ModelCube"][0]) if "/DataCube" in f \
                else SCHEMA["/ModelCube"][0]
        holder = lock_holder(path) if state["hypercube conversion"] else None
        if holder is not None and holder.get("pid") != os.getpid():
            raise FileBusyError(errno.EAGAIN, f"{path}: its hypercube is being converted to norm "
                                f"{state['hypercube conversion']!r} by {describe_holder(holder)}; "
                                "reconstruct once the conversion has finished")
        if use_cube:
            result, source = _from_cube(path, x, spaxels, cfg), MODELS
        else:
            result, source = _matrix_free(path, x, spaxels, cfg), "matrix-free LOSVD operator"
        check_unchanged(path, state, "reconstruct", cfg)
        if out is not None:
            with edit_h5(path, cfg, operation="reconstruct", need_bytes=result.nbytes) as f:
                ds = write_dataset(f, out, result, units=units, description=SCHEMA["/ModelCube"][1])
                ds.attrs["source"] = source
                ds.attrs["x_sha256"] = x_sha256(x)
                ds.attrs["inputs_fingerprint"] = fingerprint
                ds.attrs["spaxels"] = "all" if spaxels is None else np.asarray(spaxels, dtype=np.int64)
    return result


def _from_cube(path: Path, x, spaxels, cfg) -> np.ndarray:
    """``Ŷ`` read from a complete ``/HyperCube/models``, tile by tile."""
    with open_h5(path, "r", config=cfg) as f:
        st = require_complete(f)
        ds = f[MODELS]
        grid: TileGrid = st.grid
        S, C, P = grid.shape
        X = _weights(x, C, P)
        sel = np.arange(S) if spaxels is None else check_spaxels(spaxels, S)
        rows, inverse = np.unique(sel, return_inverse=True)
        _, nC, nP = grid.counts
        blocks = [(iC, iP) for iC in range(nC) for iP in range(nP)
                  if np.any(X[grid.slices((0, iC, iP))[1:]])]
        Y = np.zeros((rows.size, ds.shape[3]))
        for iS in np.unique(rows // grid.chunks[0]):
            ss = grid.slices((iS, 0, 0))[0]
            here = np.flatnonzero((rows >= ss.start) & (rows < ss.stop))
            local = rows[here] - ss.start
            for iC, iP in blocks:
                _, cs, ps = grid.slices((iS, iC, iP))
                A = ds[ss, cs, ps, :][local]             # whole chunk read, rows picked in memory
                Y[here] += np.tensordot(A.astype(np.float64), X[cs, ps], axes=([1, 2], [0, 1]))
        log.debug("%s: reconstructed %d spaxels from %d of %d (C, P) tiles", path, rows.size,
                 len(blocks), nC * nP)
    return Y[inverse]


def fit_modes(f) -> tuple[str, str]:
    """Normalisation and amplitude modes of the fit in an open file: ``/Fit``'s settings,
    else the hypercube's, else the runner's defaults ("data", "sum")."""
    fit = f["/Fit"].attrs if "/Fit" in f else {}
    hc = f["/HyperCube"].attrs if "/HyperCube" in f else {}
    text = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    return (text(fit.get("setting.norm_mode", hc.get("norm.mode", "data"))),
            text(fit.get("setting.amp_mode", hc.get("amp_mode", "sum"))))


def _matrix_free(path: Path, x, spaxels, cfg) -> np.ndarray:
    """``Ŷ`` from the matrix-free operator, in the fit's normalisation (no hypercube needed)."""
    from .operator import LOSVDOperator
    with open_h5(path, "r", config=cfg) as f:
        norm, amp = fit_modes(f)
    op = LOSVDOperator.from_h5(path, norm_mode=norm, amp_mode=amp, config=cfg)
    X = _weights(x, op.C, op.P)
    sel = np.arange(op.S) if spaxels is None else check_spaxels(spaxels, op.S)
    log.debug("%s: reconstructed %d spaxels with the matrix-free operator (norm %s)", path, sel.size,
             norm)
    return op.model(X.ravel())[sel]
