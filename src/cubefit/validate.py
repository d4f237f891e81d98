"""Checks of the fit's inputs that catch wrong-but-plausible and degenerate arrays.

Every check raises ``ValueError`` whose message starts with the dataset it is about
(``/DataCube``, ``/LOSVD``, …), says what was expected and what was found, and names
the fix.  :class:`cubefit.store.H5Manager` runs them before it touches a file, so a
refused input leaves the file as it was.

* :func:`as_real_array` — numbers only: strings, objects, ragged lists and complex
  values are refused (numpy would raise a bare ``TypeError`` or silently drop the
  imaginary part).
* :func:`check_ln_lambda_range` — a wavelength grid must be ln(λ/Å) with λ between
  100 Å and 10 µm; a grid that is log10 λ is recognised and named as such.
* :func:`losvd_axes` — a LOSVD whose axes hold ``(S, V, C)`` in another order is
  recognised and the transpose named.
* :func:`check_components_have_light`, :func:`check_templates_not_zero`,
  :func:`check_noise_weights` — inputs whose model columns or weights are all zero,
  for which every solver would return ``x = 0`` and nothing could be learnt.
* :func:`check_magnitude` — values so large (> 1e100) that the objective's squares
  and sums would overflow.
* :func:`check_dims_match` — new inputs that contradict the dimensions a file was
  created with.
"""
from __future__ import annotations

import itertools

import numpy as np

__all__ = ["as_real_array", "check_ln_lambda_range", "losvd_axes", "spaxels_of", "check_magnitude",
           "check_grid_unchanged", "crop_hint", "MAX_ABS", "check_components_have_light",
           "check_templates_not_zero", "check_noise_weights", "check_dims_match", "LAMBDA_RANGE_A"]

LAMBDA_RANGE_A = (100.0, 1.0e5)
"""Wavelengths (Å) a grid must lie within: 100 Å to 10 µm."""

MAX_ABS = 1.0e100
"""Largest size accepted for data, templates and LOSVD values (:func:`check_magnitude`)."""


def as_real_array(a, name: str, dtype=np.float64) -> np.ndarray:
    """``a`` as a ``dtype`` array (None: its own numeric dtype); ``ValueError`` naming
    ``name`` unless it holds real numbers.

    Booleans and integers are converted; strings, objects, ragged nested lists and
    complex values are refused (the imaginary part is never dropped silently).
    """
    try:
        arr = np.asarray(a)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: cannot be read as an array of numbers ({exc}); give a regular "
                         "(rectangular) array of real numbers") from None
    kind = arr.dtype.kind
    if kind == "c":
        imag = float(np.max(np.abs(arr.imag), initial=0.0))
        raise ValueError(f"{name}: expected real numbers, got complex values (dtype {arr.dtype}, "
                         f"largest |imaginary part| {imag:.3g}); pass the real quantity, e.g. "
                         "np.real(x) if the imaginary part is meaningless")
    if kind not in "biuf":
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype} (strings or objects); "
                         "convert the values to floats, e.g. np.asarray(x, dtype=float)")
    return arr if dtype is None else arr.astype(dtype, copy=False)


def check_ln_lambda_range(x, name: str) -> None:
    """A valid (increasing, uniform) grid ``x`` must be ln(λ/Å) with λ in :data:`LAMBDA_RANGE_A`.

    A grid whose ``e^x`` falls outside but whose ``10^x`` falls inside is taken to be
    log10 λ, and the message gives the conversion.
    """
    x = np.asarray(x, dtype=np.float64)
    lo, hi = LAMBDA_RANGE_A
    lam = np.exp(x[[0, -1]])
    if lo <= lam[0] and lam[-1] <= hi:
        return
    found = f"λ = e^x spans {lam[0]:.4g}-{lam[-1]:.4g} Å"
    if lo <= 10.0 ** x[0] and 10.0 ** x[-1] <= hi:
        raise ValueError(f"{name}: {found}, outside {lo:g} Å-10 µm, but 10^x spans "
                         f"{10.0 ** x[0]:.1f}-{10.0 ** x[-1]:.1f} Å: the grid is probably log10 λ; "
                         "pass ln λ = log10 λ · ln 10 (np.log(10) * grid)")
    raise ValueError(f"{name}: {found}, outside {lo:g} Å-10 µm; give natural-log wavelengths in Å, "
                     "ln(λ/Å) (e.g. np.log(lam_angstrom))")


def losvd_axes(shape, S: int | None = None, V: int | None = None, C: int | None = None,
               name: str = "/LOSVD (losvd)") -> None:
    """Check that a LOSVD of ``shape`` is ``(S, V, C)`` for the known sizes (None: unknown):
    ``S`` spaxels of ``/DataCube``, ``V`` bins of ``/VelPix``, ``C`` components.

    When the sizes match only in another axis order (e.g. ``(S, C, V)``), the message
    says so and names the ``np.transpose`` that gives ``(S, V, C)``.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3:
        raise ValueError(f"{name}: expected (S, V, C) = (spaxels, velocity bins, components), got "
                         f"shape {shape}")
    want = (S, V, C)
    if all(w is None or w == n for w, n in zip(want, shape)):
        return
    fits = [p for p in itertools.permutations(range(3))
            if all(w is None or w == shape[i] for w, i in zip(want, p))]
    known = ", ".join(f"{k}={w}{src}" for k, w, src in
                      zip("SVC", want, (" (/DataCube)", " (/VelPix)", "")) if w is not None)
    if fits:
        labels = ["?"] * 3
        for axis_name, i in zip("SVC", fits[0]):
            labels[i] = axis_name
        options = " or ".join(f"np.transpose(losvd, {p})" for p in fits)
        raise ValueError(f"{name}: shape {shape} does not match (S, V, C) with {known}, but it "
                         f"does as ({', '.join(labels)}); the layout is (S, V, C): pass {options}")
    raise ValueError(f"{name}: shape {shape} does not match (S, V, C) with {known} in any axis order; "
                     "check /LOSVD against /DataCube and /VelPix")


def spaxels_of(datacube_shape, L: int) -> int | None:
    """Number of spaxels of a data cube ``(S, L)`` or ``(L, S)`` with ``L`` pixels (None if
    neither axis has ``L``; the first axis when both have)."""
    shape = tuple(datacube_shape)
    if len(shape) != 2:
        return None
    return shape[0] if shape[1] == L else (shape[1] if shape[0] == L else None)


def check_magnitude(a: np.ndarray, name: str, limit: float = MAX_ABS) -> None:
    """Finite values of ``a`` must stay below ``limit`` in size, so that the squares and
    sums of the objective cannot overflow float64."""
    finite = np.abs(a[np.isfinite(a)])
    big = float(finite.max(initial=0.0))
    if big > limit:
        raise ValueError(f"{name}: values up to {big:.3g} in size (limit {limit:.0e}), whose squares "
                         "and sums overflow float64; rescale them (e.g. to flux units of order 1)")


def check_components_have_light(H: np.ndarray, name: str = "/LOSVD") -> None:
    """Every component of ``H (S, V, C)`` must be non-zero in at least one spaxel."""
    dark = np.flatnonzero(~np.any(H > 0, axis=(0, 1)))
    if dark.size:
        raise ValueError(f"{name}: component(s) {dark.tolist()} of {H.shape[2]} are zero in every "
                         "spaxel, so their model columns are zero and their weights cannot be fitted; "
                         "drop them from the LOSVD (and from the orbit weights)")


def check_templates_not_zero(templates: np.ndarray, lam_range: tuple, name: str = "/Templates") -> None:
    """Every template ``(P, T)`` (cropped to the range used) must be non-zero somewhere."""
    zero = np.flatnonzero(~np.any(templates != 0, axis=1))
    if zero.size:
        raise ValueError(f"{name}: template(s) {zero[:20].tolist()} ({zero.size} of "
                         f"{templates.shape[0]}) are zero over the whole range used, "
                         f"{lam_range[0]:.1f}-{lam_range[1]:.1f} Å (observed range plus the LOSVD "
                         "kernel), so they cannot contribute to the model; drop them from the "
                         "templates (and from the population axes)")


def check_noise_weights(sig: np.ndarray, mask: np.ndarray, name: str = "/Noise") -> None:
    """``1/sig²`` must be finite everywhere and positive on at least one unmasked pixel.

    ``sig (S, L)`` is already known to be positive (``inf`` = ignore the pixel).
    """
    with np.errstate(over="ignore", divide="ignore"):
        ivar = 1.0 / sig**2
    over = np.isinf(ivar)
    if over.any():
        raise ValueError(f"{name}: {int(over.sum())} values are so small that 1/Noise² overflows "
                         f"(smallest {float(sig.min()):.3g}); rescale the data and noise together "
                         "(e.g. to flux units of order 1)")
    used = ivar[:, np.asarray(mask, dtype=bool)]
    if not np.any(used > 0):
        raise ValueError(f"{name}: no unmasked pixel has a finite noise (1/Noise² is 0 everywhere), "
                         "so every pixel would be ignored; give finite noise where the data count")


def check_grid_unchanged(stored: np.ndarray, given: np.ndarray, name: str, where) -> None:
    """``init_base`` may not replace the grid ``name`` of a populated file by another one."""
    if stored.shape == given.shape and np.allclose(given, stored, rtol=1e-12, atol=0):
        return
    what = (f"{stored.size} values, now {given.size}" if stored.shape != given.shape else
            f"values differ by up to {float(np.max(np.abs(given - stored))):.3g}")
    arg = {"/ObsPix": "obs_pix", "/VelPix": "vel_pix", "/TemPix": "tem_pix"}.get(name, name)
    raise ValueError(f"{where}: init_base would replace {name} ({what}) of a populated file, whose data "
                     f"and products are on the stored grid. Give the new grid together with the data "
                     f"on it: H5Manager(path, {arg}=...).populate_from_arrays(...) (it re-checks "
                     "everything and removes what the old inputs made), or start afresh with "
                     "init_base(..., overwrite=True) (`cubefit init --overwrite`)")


def crop_hint(template_attrs: dict) -> str:
    """Why templates may not fit a populated file's ``/TemPix`` (from the crop attributes of
    its ``/Templates``): '' when they record no crop."""
    a = template_attrs
    if "T_len_in" not in a:
        return ""
    return (f"; the file's /TemPix is the template grid cropped at the first populate to pixels "
            f"{int(a['crop_i_lo'])}:{int(a['crop_i_hi'])} of the {int(a['T_len_in'])} given then "
            "(observed range plus the LOSVD kernel), so templates on the full grid need that grid "
            "again: H5Manager(path, tem_pix=<full template grid>, obs_pix=...)")


_DIM_SOURCE = {"nSpat": "/LOSVD and /DataCube spaxels", "nLSpec": "/ObsPix pixels",
               "nTSpec": "/TemPix pixels", "nVel": "/VelPix and /LOSVD bins",
               "nComp": "/LOSVD components", "nPop": "/Templates rows"}


def check_dims_match(stored: dict, given: dict, where: str) -> None:
    """``given`` sizes (e.g. ``{"nComp": 4}``) must equal the ``stored`` dimensions of a file.

    Raises ``ValueError`` naming each contradiction and the fix (start the file afresh).
    """
    diffs = [f"{k} ({_DIM_SOURCE.get(k, 'inputs')}): file {stored[k]}, inputs {v}"
             for k, v in given.items() if k in stored and int(stored[k]) != int(v)]
    if diffs:
        new = ", ".join(f"{k}={v}" for k, v in given.items())
        raise ValueError(f"{where} holds dimensions that these inputs contradict ({'; '.join(diffs)}); "
                         f"to replace its contents, start it afresh with init_base(H5Dims({new}, "
                         "...), overwrite=True) (`cubefit init --overwrite`), or use another file")
