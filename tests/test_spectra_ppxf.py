"""Side by side with pPXF 9.5.2 on the two spectra its wheel ships (network: E-MILES is
fetched once into the user cache).

Both fitters get the same data, the same 150 E-MILES SSPs, the same fitted pixels (our
emission-line and template-range mask, passed to pPXF as ``goodpixels``), Gauss–Hermite
moments to h4 and the same additive Legendre degree; pPXF's h3/h4 penalty is switched off
(``bias=0``), since we have none.  pPXF's templates are built as its ``sps_util`` does —
broadened in linear λ by the quadrature difference of the data's and E-MILES's FWHM, then
log-rebinned with ``ppxf_util.log_rebin`` — except that the broadening uses
``varsmooth``'s exact constant-width path on 100 Å pieces: its variable-width path
interpolates linearly and widens the templates by ~0.4 Å² in variance, which alone moves
pPXF's σ by 2–3 % on SDSS.
"""
import importlib.resources
import math

import numpy as np
import pytest
from astropy.io import fits
from threadpoolctl import threadpool_limits

from cubefit import C_KMS
from cubefit.spectra import (Camera, ContinuumOptions, Resolution, Spectrum, air_to_vacuum, emiles_fwhm,
                             fit_continuum, prepare_templates)
from cubefit.templates import EMILES_PATTERN, fetch_emiles, parse_miles_name

ppxf_mod = pytest.importorskip("ppxf.ppxf")
ppxf_util = pytest.importorskip("ppxf.ppxf_util")

pytestmark = pytest.mark.network
RATIO = 2                              # template pixels per data pixel, both fitters


@pytest.fixture(autouse=True)
def one_thread():
    """Small dense problems: threaded BLAS only adds contention on a shared machine."""
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def emiles_linear():
    """The raw E-MILES SSPs (air, linear λ) in the (age, [M/H]) order of our library."""
    folder = fetch_emiles()
    files = sorted(folder.glob(EMILES_PATTERN),
                   key=lambda f: (parse_miles_name(f.name)["age"], parse_miles_name(f.name)["metal"]))
    h = fits.getheader(files[0])
    lam = h["CRVAL1"] + h["CDELT1"] * (np.arange(h["NAXIS1"]) + 1 - h.get("CRPIX1", 1))
    keep = (lam > 3300) & (lam < 10000)
    return lam[keep], np.array([fits.getdata(f)[keep] for f in files]).T      # (npix, 150)


def ppxf_templates(lam, spectra, fwhm_gal, velscale, vacuum):
    """pPXF-style templates: broadened by sqrt(FWHM_gal² − FWHM_tem²) (clipped at 0) in
    linear λ, piecewise-constant width on 100 Å pieces, then log-rebinned."""
    sig = np.sqrt((fwhm_gal(lam) ** 2 - emiles_fwhm(lam) ** 2).clip(0)) / math.sqrt(8 * math.log(2))
    out = np.empty_like(spectra)
    for a in np.arange(lam[0], lam[-1], 100.0):
        inner = (lam >= a) & (lam < a + 100.0)
        outer = (lam >= a - 40.0) & (lam < a + 140.0)
        s = float(np.interp(a + 50.0, lam, sig))
        piece = ppxf_util.varsmooth(lam[outer], spectra[outer], s) if s > 0 else spectra[outer]
        out[inner] = piece[inner[outer]]
    lam_t = air_to_vacuum(lam) if vacuum else lam
    tpl, ln_t, _ = ppxf_util.log_rebin(lam_t, out, velscale=velscale)
    return tpl / np.median(tpl), np.exp(ln_t)


def side_by_side(emiles_linear, wave, flux, ivar, fwhm, z, air, degree):
    """Our fit and pPXF's on the same spectrum; returns both (v, σ) and our result."""
    vs = C_KMS * math.log(wave[-1] / wave[0]) / (wave.size - 1)
    lo, hi = wave[0] / (1 + z), wave[-1] / (1 + z)
    pt = prepare_templates(velscale=vs / RATIO, lam_range=(lo * 0.95, hi * 1.05))
    spec = Spectrum([Camera("x", wave, flux, ivar, Resolution.from_fwhm(fwhm, wave))], z=z, air=air)
    ours = fit_continuum(spec, pt, ContinuumOptions(moments=4, degree=degree, mdegree=0,
                                                    sigma_start=200.0))
    assert ours.status == 0, ours.message
    lam_rest = wave / (1 + z)
    lam_l, spectra = emiles_linear
    sel = (lam_l > lo * 0.93) & (lam_l < hi * 1.07)
    tpl, lam_t = ppxf_templates(lam_l[sel], spectra[sel],
                                lambda x: np.interp(x, lam_rest, fwhm / (1 + z)), vs / RATIO, not air)
    noise = 1 / np.sqrt(np.where(ivar > 0, ivar, ivar[ivar > 0].min() * 1e-6))
    pp = ppxf_mod.ppxf(tpl, flux, noise, vs, [0.0, 200.0], goodpixels=np.flatnonzero(ours.good[0]),
                       moments=4, degree=degree, lam=lam_rest, lam_temp=lam_t, velscale_ratio=RATIO,
                       bias=0, quiet=True)
    print(f"ours v={ours.vel:.2f}±{ours.vel_err:.2f} σ={ours.sigma:.2f}±{ours.sigma_err:.2f}; "
          f"pPXF v={pp.sol[0]:.2f}±{pp.error[0]:.2f} σ={pp.sol[1]:.2f}±{pp.error[1]:.2f}")
    return ours, pp.sol[:2]


def test_sauron_ngc4550(emiles_linear):
    """SAURON (air wavelengths, FWHM 4.2 Å), as in pPXF's kinematics example: degree 4."""
    path = importlib.resources.files("ppxf") / "spectra/NGC4550_SAURON.fits"
    gal, h = fits.getdata(path, header=True)
    lam_range = h["CRVAL1"] + np.array([0.0, h["CDELT1"] * (h["NAXIS1"] - 1)])
    flux, ln_lam, _ = ppxf_util.log_rebin(lam_range, gal.astype(np.float64))
    wave = np.exp(ln_lam)
    ivar = np.full(wave.size, (0.0047 * np.median(gal)) ** -2.0)
    ours, (v, s) = side_by_side(emiles_linear, wave, flux, ivar, np.full(wave.size, 4.2), 0.0015,
                                air=True, degree=4)
    assert abs(ours.vel - v) < 3.0, (ours.vel, v)
    assert abs(ours.sigma / s - 1) < 0.02, (ours.sigma, s)
    assert 50.0 < s < 200.0 and ours.sigma_err > 0


def test_sdss_ngc3522(emiles_linear):
    """SDSS DR18 (vacuum, resolution from WDISP), degree 10.  Rest λ > 8900 Å is left out of
    both fits: there E-MILES is coarser than SDSS, and pPXF clips the quadrature difference at
    zero while we subtract it (a difference by design, not under test here)."""
    path = importlib.resources.files("ppxf") / "spectra/NGC3522_SDSS_DR18.fits"
    with fits.open(path) as hdul:
        t = hdul["COADD"].data
        z = float(hdul["SPECOBJ"].data["z"][0])
        loglam = t["loglam"].astype(np.float64)
        # the file stores log10 λ in float32; the grid is uniform in log10 λ by construction
        loglam = loglam[0] + (loglam[-1] - loglam[0]) * np.arange(loglam.size) / (loglam.size - 1)
        wave = 10 ** loglam
        flux, ivar = t["flux"].astype(np.float64), t["ivar"].astype(np.float64)
        fwhm = math.sqrt(8 * math.log(2)) * t["wdisp"] * np.gradient(wave)
    ivar[wave / (1 + z) > 8900.0] = 0.0
    ours, (v, s) = side_by_side(emiles_linear, wave, flux, ivar, fwhm, z, air=False, degree=10)
    assert abs(ours.vel - v) < 3.0, (ours.vel, v)
    assert abs(ours.sigma / s - 1) < 0.02, (ours.sigma, s)
    assert 50.0 < s < 200.0 and ours.sigma_err > 0
