"""Science outputs of a global fit: light, mass, ages and metallicities per component.

Definitions (used for the fit *and* for the truth of a mock, so they compare like with like)
-------------------------------------------------------------------------------------------
**Light.**  The light of population ``p`` of component ``c`` is the model flux it
contributes over the good pixels of all spaxels::

    ℓ[c,p] = Σ_s Σ_{l good} A[s,c,p,l]          light of unit weight (data flux × pixels)
    L[c,p] = ℓ[c,p] · x[c,p]                      light of the population
    L_c    = Σ_p L[c,p] = Σ_s Σ_{l good} (model flux of component c)[s,l]
    F_c    = L_c / Σ_c' L_c'                      light fraction

``A`` are the unweighted model columns in the normalisation the weights ``x`` belong to
(``/Fit`` attribute ``setting.norm_mode`` for the fit, ``norm.mode`` of ``/Truth/x_true``
for a mock's truth); "good" pixels are unmasked and have a finite noise.  λ-weights and
inverse variance weight the *fit*, never the light.  This is
:func:`cubefit.solvers.priors.unit_light` — the quantity the orbit-weight prior
constrains — so recovered fractions, orbit-weight targets and the truth of a mock are
all measured with one function (:func:`light_per_weight`).  Per spaxel,
``Lmap[s,c] = Σ_{l good} (model flux of component c)[s,l]`` and ``Σ_s Lmap[s,c] = L_c``
(:func:`light_maps`).

**Mass.**  A weight ``x[c,p]`` on template ``p`` (as stored in ``/Templates``) carries the
stellar mass ``μ_p · x[c,p]`` with ``μ_p`` = ``/TemplateMass`` = ``masses_p / norm_p``:
SSP spectra such as E-MILES are per solar mass of *initial* stellar mass, ``masses`` is
the mass in living stars and remnants per initial solar mass, and ``norm`` the factor
the library divided the spectra by (:class:`cubefit.templates.TemplateLibrary`).  This
is the library's mass-to-light information used exactly: for E-MILES
``masses / L_V = M/L_V``, but the V-band luminosity of the templates is not needed (the
cropped spectra do not cover the whole V band).  Without ``/TemplateMass`` (e.g.
synthetic templates) mass-weighted quantities are None.

**Means.**  For weights ``W[c,p]`` (``L`` light, or ``M = μ x`` mass)::

    ⟨log age⟩_c = Σ_p W[c,p] · log10(age_p / yr) / Σ_p W[c,p]      dex
    ⟨[M/H]⟩_c   = Σ_p W[c,p] · [M/H]_p / Σ_p W[c,p]                 dex

i.e. ages are averaged in log, the convention of pPXF's ``mean_age_metal``;
``10**(⟨log age⟩ - 9)`` Gyr is therefore a geometric mean age.  The age axis is the
population axis whose name contains "age" (units Gyr, Myr or yr from its ``units``
attribute; none given is taken as Gyr, the unit of every loader here), the metallicity
axis the one whose name contains "metal" or "m/h".

:func:`analyse` gathers everything for a fitted file (fit and, for a mock, truth;
maps; χ² per spaxel; model spectra; fit history); :mod:`cubefit.report` turns it into
figures and a Markdown summary.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .config import Config, get_config
from .h5io import edit_h5
from .provenance import file_fingerprint, require_fresh_fit, stale_products
from .store import SCHEMA, open_h5, write_dataset

log = logging.getLogger(__name__)

__all__ = ["light_per_weight", "light_maps", "populations", "Populations", "Analysis", "analyse",
           "write_template_masses", "write_truth", "write_layout", "AGE_UNIT_LOG10_YR", "TRUTH_X"]

AGE_UNIT_LOG10_YR = {"yr": 0.0, "Myr": 6.0, "Gyr": 9.0}
"""log10 of one unit of the age axis in years, per unit name."""

TRUTH_X = "/Truth/x_true"
"""Dataset holding a mock's true weights ``(C, P)``; its ``norm.mode`` attribute names the
normalisation they belong to."""


# ----------------------------------------------------------------------------- light

def light_per_weight(op) -> np.ndarray:
    """``ℓ (C, P)``: light over good pixels of unit weight of each column (module docstring).

    ``op`` is a :class:`cubefit.operator.LOSVDOperator` in the normalisation of the
    weights it will be applied to; its λ-weights and inverse variance do not change
    the result (they only decide which pixels are good: weight > 0).  One adjoint.
    """
    from .solvers.priors import unit_light
    return unit_light(op).reshape(op.C, op.P)


def light_maps(op, x) -> tuple[np.ndarray, np.ndarray]:
    """Light of each component in each spaxel, and the model cube.

    Returns ``(maps (S, C), model (S, L))``: ``maps[s,c] = Σ_{l good} (A x_c)[s,l]`` with
    ``x_c`` the weights of component ``c`` alone (one forward pass per component), and
    ``model = Σ_c A x_c`` the unweighted model spectra in data units.
    """
    X = np.asarray(x, dtype=np.float64).reshape(op.C, op.P)
    good = np.asarray(op.row_weights) > 0
    maps = np.zeros((op.S, op.C))
    model = np.zeros((op.S, op.L))
    for c in range(op.C):
        if not X[c].any():
            continue
        Xc = np.zeros_like(X)
        Xc[c] = X[c]
        mc = op.model(Xc)
        maps[:, c] = np.where(good, mc, 0.0).sum(axis=1)
        model += mc
    return maps, model


# ----------------------------------------------------------------------------- populations

def _log_age_offset(unit: str, name: str) -> float:
    u = unit.split()[0] if unit else "Gyr"
    if u not in AGE_UNIT_LOG10_YR:
        raise ValueError(f"population axis {name!r}: age unit {unit!r} is not one of "
                         f"{sorted(AGE_UNIT_LOG10_YR)}; store the axis in Gyr, Myr or yr")
    return AGE_UNIT_LOG10_YR[u]


@dataclass
class Populations:
    """Light (and mass) of every population of every component, and what follows from them.

    ``light (C, P)`` = ``L[c,p]`` and ``mass (C, P)`` = ``μ_p x[c,p]`` or None (module
    docstring), ``pop_axes`` {name: values} (row-major grid of ``P``), ``axis_units``
    {name: unit}, ``names`` one label per component.  Ages are log10(age/yr) in dex.
    """

    light: np.ndarray
    mass: np.ndarray | None
    pop_axes: dict
    axis_units: dict
    names: list

    @property
    def C(self) -> int:
        return self.light.shape[0]

    @property
    def pop_shape(self) -> tuple:
        return tuple(v.size for v in self.pop_axes.values()) or (self.light.shape[1],)

    def weights(self, kind: str = "light") -> np.ndarray | None:
        """``L`` (``kind="light"``) or ``M`` (``"mass"``, None if unknown), ``(C, P)``."""
        if kind not in ("light", "mass"):
            raise ValueError(f"kind: expected 'light' or 'mass', got {kind!r}")
        return self.light if kind == "light" else self.mass

    def totals(self, kind: str = "light") -> np.ndarray | None:
        """Light ``L_c`` or mass per component ``(C,)``."""
        W = self.weights(kind)
        return None if W is None else W.sum(axis=1)

    def fractions(self, kind: str = "light") -> np.ndarray | None:
        """Light (or mass) fraction of each component ``(C,)``; NaN if the total is not > 0."""
        t = self.totals(kind)
        if t is None:
            return None
        total = t.sum()
        return t / total if total > 0 else np.full(self.C, np.nan)

    def grid(self, kind: str = "light") -> np.ndarray | None:
        """Each component's weights as fractions of its own total on the population grid,
        ``(C, *pop_shape)`` (e.g. ``(C, n_age, n_metal)``); NaN for an empty component."""
        W = self.weights(kind)
        if W is None:
            return None
        tot = W.sum(axis=1, keepdims=True)
        frac = np.divide(W, tot, out=np.full(W.shape, np.nan), where=tot > 0)
        return frac.reshape((self.C,) + self.pop_shape)

    def axis_name(self, which: str) -> str | None:
        """Name of the ``"age"`` or ``"metal"`` population axis (module docstring), or None."""
        if which not in ("age", "metal"):
            raise ValueError(f"which: expected 'age' or 'metal', got {which!r}")
        keys = ("age",) if which == "age" else ("metal", "m/h")
        return next((k for k in self.pop_axes if any(t in k.lower() for t in keys)), None)

    def axis_values(self, which: str) -> np.ndarray | None:
        """Values along the age axis as log10(age/yr) (``"age"``) or along the metallicity
        axis in dex (``"metal"``); None without that axis."""
        name = self.axis_name(which)
        if name is None:
            return None
        v = self.pop_axes[name]
        if which == "metal":
            return v
        if np.any(v <= 0):
            raise ValueError(f"population axis {name!r}: ages must be positive to take log10")
        return np.log10(v) + _log_age_offset(self.axis_units.get(name, "Gyr"), name)

    def template_values(self, which: str) -> np.ndarray | None:
        """``(P,)`` :meth:`axis_values` of every template (row-major grid order)."""
        name = self.axis_name(which)
        if name is None:
            return None
        shape = self.pop_shape
        a = list(self.pop_axes).index(name)
        expand = [1] * len(shape)
        expand[a] = shape[a]
        return np.broadcast_to(self.axis_values(which).reshape(expand), shape).ravel()

    def _mean(self, which: str, kind: str, total: bool) -> np.ndarray | float | None:
        W, v = self.weights(kind), self.template_values(which)
        if W is None or v is None:
            return None
        if total:
            W = W.sum(axis=0, keepdims=True)
        tot = W.sum(axis=1)
        out = np.divide(W @ v, tot, out=np.full(tot.shape, np.nan), where=tot > 0)
        return float(out[0]) if total else out

    def mean_log_age(self, kind: str = "light", total: bool = False):
        """⟨log10(age/yr)⟩ (dex) per component ``(C,)``, or of all components together
        (``total=True``, a float); None without an age axis or without masses."""
        return self._mean("age", kind, total)

    def mean_metal(self, kind: str = "light", total: bool = False):
        """⟨[M/H]⟩ (dex) per component ``(C,)`` or of all together (``total=True``)."""
        return self._mean("metal", kind, total)

    def __repr__(self) -> str:
        def fmt(a):
            return "n/a" if a is None else "[" + ", ".join(f"{v:.3f}" for v in a) + "]"
        axes = ", ".join(f"{k} ({v.size})" for k, v in self.pop_axes.items()) or "none"
        return (f"Populations(C={self.C} components {list(self.names)}, P={self.light.shape[1]} "
                f"on axes {axes}; light fractions {fmt(self.fractions('light'))}, "
                f"<log age>_L {fmt(self.mean_log_age('light'))} dex, "
                f"<[M/H]>_L {fmt(self.mean_metal('light'))} dex, "
                f"mass {'known' if self.mass is not None else 'unknown'})")

    def summary(self) -> dict:
        """Plain-Python summary (lists per component; None where unavailable), for JSON."""
        def plain(a):
            return None if a is None else np.asarray(a, dtype=float).tolist()
        return {"names": list(self.names),
                "light_fraction": plain(self.fractions("light")),
                "mass_fraction": plain(self.fractions("mass")),
                "mean_log_age_light": plain(self.mean_log_age("light")),
                "mean_metal_light": plain(self.mean_metal("light")),
                "mean_log_age_mass": plain(self.mean_log_age("mass")),
                "mean_metal_mass": plain(self.mean_metal("mass")),
                "total": {"mean_log_age_light": self.mean_log_age("light", total=True),
                          "mean_metal_light": self.mean_metal("light", total=True),
                          "mean_log_age_mass": self.mean_log_age("mass", total=True),
                          "mean_metal_mass": self.mean_metal("mass", total=True)}}


def populations(x, light_unit, pop_axes=None, axis_units=None, mass_per_weight=None,
                names=None) -> Populations:
    """:class:`Populations` of weights ``x (C·P,)`` or ``(C, P)``.

    ``light_unit (C, P)`` is :func:`light_per_weight` of the operator ``x`` belongs to;
    ``mass_per_weight (P,)`` is ``μ`` (``/TemplateMass``) or None; ``pop_axes`` and
    ``axis_units`` describe the population grid (default one unnamed axis).
    """
    ell = np.asarray(light_unit, dtype=np.float64)
    if ell.ndim != 2:
        raise ValueError(f"light_unit: expected (C, P), got shape {ell.shape}")
    C, P = ell.shape
    X = np.asarray(x, dtype=np.float64)
    if X.size != C * P:
        raise ValueError(f"x: expected C·P = {C * P} weights for light_unit of shape {ell.shape}, "
                         f"got shape {X.shape}")
    X = X.reshape(C, P)
    axes = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in dict(pop_axes or {}).items()}
    if axes and int(np.prod([v.size for v in axes.values()])) != P:
        raise ValueError(f"pop_axes: grid {tuple(v.size for v in axes.values())} does not hold P={P} "
                         "populations")
    mass = None
    if mass_per_weight is not None:
        mu = np.asarray(mass_per_weight, dtype=np.float64).ravel()
        if mu.shape != (P,) or not np.all(np.isfinite(mu) & (mu >= 0)):
            raise ValueError(f"mass_per_weight: expected ({P},) finite non-negative masses per "
                             f"unit weight, got shape {mu.shape}")
        mass = X * mu
    names = [f"component {c}" for c in range(C)] if names is None else [str(n) for n in names]
    if len(names) != C:
        raise ValueError(f"names: expected {C} component names, got {len(names)}")
    return Populations(light=ell * X, mass=mass, pop_axes=axes, axis_units=dict(axis_units or {}),
                       names=names)


# ----------------------------------------------------------------------------- file extras

def write_template_masses(h5, library, *, config: Config | None = None) -> np.ndarray | None:
    """Store ``/TemplateMass (P,)`` = ``library.masses / library.norm`` (module docstring).

    ``library`` is the :class:`cubefit.templates.TemplateLibrary` the file's templates
    came from (same order).  Returns the array, or None (nothing written) when the
    library has no masses.
    """
    if library.masses is None:
        log.info("%s: the template library has no masses; mass-weighted quantities unavailable", h5)
        return None
    mu = np.asarray(library.masses, dtype=np.float64) / np.asarray(library.norm, dtype=np.float64)
    with edit_h5(Path(h5), config or get_config(), operation="write_template_masses") as f:
        P = f["/Templates"].shape[0]
        if mu.shape != (P,):
            raise ValueError(f"{h5}: the library has {mu.size} templates but /Templates has P={P}")
        ds = write_dataset(f, "/TemplateMass", mu)
        ds.attrs["source"] = library.source
        digests = json.loads(_text(f.attrs.get("input_digests", "{}")) or "{}")
        ds.attrs["templates_digest"] = digests.get("/Templates", "")
    return mu


def write_truth(h5, x_true, *, model=None, norm_mode: str = "model", meta: dict | None = None,
                config: Config | None = None) -> None:
    """Keep a mock's truth beside its inputs: ``/Truth/x_true (C, P)`` (attribute
    ``norm.mode``), optionally the noise-free cube ``/Truth/model (S, L)``, and ``meta``
    (e.g. the components' parameters) as JSON attributes of ``/Truth``."""
    with edit_h5(Path(h5), config or get_config(), operation="write_truth") as f:
        ds = write_dataset(f, TRUTH_X, np.asarray(x_true, dtype=np.float64),
                           units=SCHEMA["/X_global"][0],
                           description=f"true population weights (C, P) of the mock, in the "
                                       f"{norm_mode!r} normalisation")
        ds.attrs["norm.mode"] = norm_mode
        f["/Truth"].attrs["inputs_fingerprint"] = file_fingerprint(f)
        if model is not None:
            write_dataset(f, "/Truth/model", np.asarray(model, dtype=np.float64),
                          units=f["/DataCube"].attrs.get("units", "data flux density"),
                          description="noise-free mock cube (S, L) on /ObsPix")
        for k, v in (meta or {}).items():
            f["/Truth"].attrs[k] = json.dumps(v, default=str)


def write_layout(h5, *, xy=None, xy_units: str = "spaxel", names=None,
                 config: Config | None = None) -> None:
    """Store the spaxel positions ``/SpaxelXY (S, 2)`` (in ``xy_units``, e.g. "spaxel" or
    "arcsec") and/or the component names ``/CompNames (C,)``, checked against the file's
    dimensions; the maps and labels of the report use them."""
    with edit_h5(Path(h5), config or get_config(), operation="write_layout") as f:
        S, _, C = f["/LOSVD"].shape
        if xy is not None:
            xy = np.asarray(xy, dtype=np.float64)
            if xy.shape != (S, 2) or not np.all(np.isfinite(xy)):
                raise ValueError(f"xy: expected finite (S, 2) = ({S}, 2) spaxel centres, got shape "
                                 f"{xy.shape}")
            write_dataset(f, "/SpaxelXY", xy, units=xy_units)
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != C:
                raise ValueError(f"names: expected one name per component (C = {C}), got {len(names)}")
            write_dataset(f, "/CompNames", np.array(names, dtype=object), dtype=h5py.string_dtype())


# ----------------------------------------------------------------------------- analysis

@dataclass
class Analysis:
    """Everything the report shows about a fitted file (see :func:`analyse`).

    ``fit``/``truth`` :class:`Populations` (truth None unless ``/Truth/x_true``);
    ``maps``/``truth_maps (S, C)`` light of each component per spaxel (data flux × pixels);
    ``xy (S, 2)`` spaxel centres in ``xy_units`` (None without ``/SpaxelXY``);
    ``lam (L,)`` Å, ``data``/``model (S, L)`` in ``flux_units``, ``mask (L,)``,
    ``noise (S, L)`` or None, ``chi2 (S,)`` reduced χ² per spaxel
    (:func:`cubefit.plots.spaxel_chi2`), ``history`` {time, passes, cost, optimality}
    per solver iteration, ``fit_attrs`` the ``/Fit`` attributes, ``norm_mode`` of the fit.
    """

    path: Path
    fit: Populations
    truth: Populations | None
    maps: np.ndarray
    truth_maps: np.ndarray | None
    xy: np.ndarray | None
    xy_units: str
    lam: np.ndarray
    data: np.ndarray
    model: np.ndarray
    mask: np.ndarray
    noise: np.ndarray | None
    chi2: np.ndarray
    history: dict
    fit_attrs: dict
    norm_mode: str
    flux_units: str = "data flux density"

    def __repr__(self) -> str:
        S, L = self.data.shape
        chi2 = self.chi2[np.isfinite(self.chi2)]
        med = f"{np.median(chi2):.3g}" if chi2.size else "n/a"
        status = self.fit_attrs.get("message", "?")
        return (f"Analysis({self.path}: S={S} spaxels × L={L} pixels, norm {self.norm_mode!r}, "
                f"median reduced χ² {med}, truth {'yes' if self.truth is not None else 'no'}; "
                f"fit: {self.fit!r}; solver: {status})")

    def comparison(self) -> list[dict]:
        """Rows ``{quantity, component, true, fit, diff}`` for fractions and means (truth only)."""
        if self.truth is None:
            return []
        rows = []
        for label, fn in (("light fraction", lambda p: p.fractions("light")),
                          ("<log age>_L [dex]", lambda p: p.mean_log_age("light")),
                          ("<[M/H]>_L [dex]", lambda p: p.mean_metal("light")),
                          ("mass fraction", lambda p: p.fractions("mass")),
                          ("<log age>_M [dex]", lambda p: p.mean_log_age("mass")),
                          ("<[M/H]>_M [dex]", lambda p: p.mean_metal("mass"))):
            t, f = fn(self.truth), fn(self.fit)
            if t is None or f is None:
                continue
            rows += [{"quantity": label, "component": self.fit.names[c], "true": float(t[c]),
                      "fit": float(f[c]), "diff": float(f[c] - t[c])} for c in range(self.fit.C)]
        return rows


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def analyse(h5, x=None, *, config: Config | None = None) -> Analysis:
    """Science outputs of the fit in ``h5`` (weights ``x``, default ``/X_global``).

    Builds the matrix-free operator in the fit's normalisation (and in the truth's, if
    different), so no hypercube is needed; cost: ``C`` forward passes and one adjoint
    per normalisation.  A fit made from other inputs than the file holds is refused;
    a truth or template masses made for other inputs are left out, with a warning.
    """
    from .operator import LOSVDOperator
    from .plots import spaxel_chi2
    from .recon import fit_modes
    from .runner import read_fit

    cfg = config or get_config()
    path = Path(h5)
    history, attrs = {}, {}
    from_file = x is None
    if from_file:
        x, attrs, data = read_fit(path, config=cfg)
        history = {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("history/")}
    with open_h5(path, "r", config=cfg) as f:
        if from_file:
            require_fresh_fit(f, "the analysis")
        stale = stale_products(f, cfg.lambda_weights_dset)
        for name in ("/Truth", "/TemplateMass"):
            if name in stale:
                log.warning("%s: %s was %s: left out of the analysis", path, name, stale[name])
        norm_mode, amp_mode = fit_modes(f)
        get = lambda n: f[n][...] if n in f else None  # noqa: E731
        pop_axes = {k: v[...] for k, v in f["/PopAxes"].items()} if "/PopAxes" in f else {}
        axis_units = {k: _text(v.attrs.get("units", "")) for k, v in f["/PopAxes"].items()} \
            if "/PopAxes" in f else {}
        mu = None if "/TemplateMass" in stale else get("/TemplateMass")
        names = [_text(n) for n in f["/CompNames"][...]] if "/CompNames" in f else None
        xy = get("/SpaxelXY")
        xy_units = _text(f["/SpaxelXY"].attrs.get("units", "")) if xy is not None else ""
        x_true = None if "/Truth" in stale else get(TRUTH_X)
        truth_norm = _text(f[TRUTH_X].attrs.get("norm.mode", "model")) if x_true is not None else None
        flux_units = _text(f["/DataCube"].attrs.get("units", "data flux density"))
        lam = np.exp(f["/ObsPix"][...])
        data, noise = f["/DataCube"][...], get("/Noise")

    def operator(norm):
        return LOSVDOperator.from_h5(path, norm_mode=norm, amp_mode=amp_mode, lambda_weights=None,
                                     use_ivar=True, config=cfg)

    op = operator(norm_mode)
    kw = dict(pop_axes=pop_axes, axis_units=axis_units, mass_per_weight=mu, names=names)
    fit = populations(x, light_per_weight(op), **kw)
    maps, model = light_maps(op, x)
    truth = truth_maps = None
    if x_true is not None:
        op_t = op if truth_norm == norm_mode else operator(truth_norm)
        truth = populations(x_true, light_per_weight(op_t), **kw)
        truth_maps, _ = light_maps(op_t, x_true)
    chi2 = spaxel_chi2(data, model, op.mask, None if noise is None else 1.0 / noise**2)
    return Analysis(path=path, fit=fit, truth=truth, maps=maps, truth_maps=truth_maps, xy=xy,
                    xy_units=xy_units, lam=lam, data=data, model=model, mask=op.mask, noise=noise,
                    chi2=chi2, history=history, fit_attrs=attrs, norm_mode=norm_mode,
                    flux_units=flux_units)
