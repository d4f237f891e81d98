"""Units and meaning of the datasets and ``/Fit`` attributes added by the IFU path
(:mod:`cubefit.ifu`), the Monte-Carlo uncertainties (:mod:`cubefit.uncertainties`) and the
automatic regularisation (:mod:`cubefit.regul_auto`).

:mod:`cubefit.store` merges :data:`SCHEMA` into its own, and :mod:`cubefit.runner` merges
:data:`FIT_ATTRS` into its own, so that every dataset and attribute written has its units and
meaning.  This module imports nothing from the package (no import cycles).
"""
from __future__ import annotations

__all__ = ["SCHEMA", "FIT_ATTRS"]

_UNC = {
    "light_fraction": ("fraction", "light fraction L_c / sum L"),
    "log_age_light": ("dex (log10 yr)", "light-weighted <log10(age/yr)>"),
    "metal_light": ("dex", "light-weighted <[M/H]>"),
    "log_age_mass": ("dex (log10 yr)", "mass-weighted <log10(age/yr)>"),
    "metal_mass": ("dex", "mass-weighted <[M/H]>"),
}

SCHEMA: dict[str, tuple[str, str]] = {
    "/BinMap": ("bin index (-1: not used)",
                "spatial bin of each spaxel of the original cube (ny, nx); bin s is row s of "
                "/DataCube and /SpaxelXY"),
    "/Fit/regul_search/strength": ("dimensionless", "Tikhonov strengths tried by regul='auto' "
                                   "(K,), increasing; the first is 0 (unregularised)"),
    "/Fit/regul_search/chi2": ("(data flux density)^2 x inverse variance",
                               "chi2 = sum m w ivar (Y - A x)^2 of the fit at each strength (K,)"),
    "/Fit/uncertainties/x_std": ("template weight (as /X_global)",
                                 "standard deviation of each weight over the Monte-Carlo "
                                 "realisations (C·P,)"),
    "/Fit/uncertainties/status": ("", "solver status of each Monte-Carlo re-solve (N,); 1 = "
                                  "KKT certificate"),
    **{f"/Fit/uncertainties/{q}": (u, f"{m} of each component: rows best fit, 16th, 50th, 84th "
                                   "percentile and standard deviation over the Monte-Carlo "
                                   "realisations (5, C)")
       for q, (u, m) in _UNC.items()},
    **{f"/Fit/uncertainties/samples/{q}": (u, f"{m} of each component in each Monte-Carlo "
                                           "realisation (N, C)")
       for q, (u, m) in _UNC.items()},
}
"""Dataset name → (units, meaning), merged into :data:`cubefit.store.SCHEMA`."""

FIT_ATTRS: dict[str, tuple[str, str]] = {
    "setting.regul_auto": ("bool", "setting.regul was chosen by the chi2 criterion (regul='auto')"),
    "setting.nmonte": ("realisations", "Monte-Carlo re-solves for /Fit/uncertainties (0: none)"),
    "setting.seed": ("", "seed of the Monte-Carlo noise draws ('none': unseeded)"),
    "regul_auto.chi2_0": ("as /Fit/regul_search/chi2", "chi2 of the unregularised fit"),
    "regul_auto.n_data": ("data values", "N: data values with a positive weight"),
    "regul_auto.target": ("as /Fit/regul_search/chi2",
                          "allowed chi2 rise sqrt(2N) x chi2_0/N (noise rescaled to chi2_0/N = 1)"),
    "regul_auto.delta_chi2": ("dimensionless (chi2 rescaled to chi2_0/N = 1)",
                              "chi2 rise of the chosen strength; the criterion asks <= sqrt(2N)"),
    "uncertainties.nmonte": ("realisations", "Monte-Carlo re-solves done"),
    "uncertainties.kind": ("", "'noise' (draws from /Noise) or 'residual bootstrap'"),
    "uncertainties.seed": ("", "seed of numpy.random.default_rng ('none': unseeded)"),
    "uncertainties.passes": ("operator applications", "operator passes of all re-solves"),
    "uncertainties.failed": ("realisations", "re-solves that ended without a KKT certificate"),
}
"""``/Fit`` attribute → (units, meaning), merged into :data:`cubefit.runner.FIT_ATTRS`."""
