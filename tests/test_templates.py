"""Tests for cubefit.templates: MILES names, FITS-folder and .npz loaders, crop, rebin,
normalisation, and the E-MILES fetch/cache (offline with a fake archive, online once)."""
import io
import math
import sys
import tarfile

import numpy as np
import pytest
from astropy.io import fits

from cubefit import C_KMS, templates
from cubefit.grids import edges_from_centres, log_grid
from cubefit.templates import (EDGE_PIX, MILES_FLUX_UNIT, TemplateLibrary, emiles_dir,
                               fetch_emiles, parse_miles_name)

# Synthetic MILES-style library: 3 ages × 3 [M/H], linear λ 4000–6699.1 Å at 0.9 Å/px,
# each spectrum a flat continuum A(age, metal) plus a Gaussian line at 5000 Å whose
# integrated flux is A·EW.
AGES = [1.0, 2.5119, 10.0]
METALS = [-0.40, 0.00, 0.22]
CRVAL, CDELT, NPIX = 4000.0, 0.9, 3000
LINE, SIGMA, EW = 5000.0, 3.0, 2.0


def level(age, metal):
    return 1.0 + age + 10.0 * (metal + 2.0)


def miles_name(age, metal, imf="un"):
    z = f"Z{'m' if metal < 0 else 'p'}{abs(metal):.2f}"
    return f"E{imf}1.30{z}T{age:07.4f}_iPp0.00_baseFe_linear_FWHM_variable.fits"


def synthetic_spectrum(lam, a):
    gauss = np.exp(-0.5 * ((lam - LINE) / SIGMA) ** 2) / (SIGMA * math.sqrt(2 * math.pi))
    return a * (1.0 + EW * gauss)


def write_fits(path, flux, resolution="2.51 - 23.57 (Angstroms) FWHM", crval=CRVAL, cdelt=CDELT):
    hdu = fits.PrimaryHDU(np.asarray(flux, dtype=np.float64))
    hdu.header["CRVAL1"] = crval
    hdu.header["CDELT1"] = cdelt
    hdu.header["CRPIX1"] = 1
    # Same card style as the MILES web tool writes.
    for text in ("# Models Library:      E-MILES", "# Isochrone:           Padova+00",
                 f"# Spectral resolution: {resolution}"):
        hdu.header["COMMENT"] = text
    hdu.writeto(path)


@pytest.fixture
def miles_folder(tmp_path):
    lam = CRVAL + CDELT * np.arange(NPIX)
    rng = np.random.default_rng(1)
    pairs = [(a, m) for a in AGES for m in METALS]
    for k in rng.permutation(len(pairs)):      # write order must not matter
        a, m = pairs[k]
        write_fits(tmp_path / miles_name(a, m), synthetic_spectrum(lam, level(a, m)))
    return tmp_path


def geometric_widths(ln_lam):
    """Pixel widths in Å of a log grid (edges at the ln-λ mid-points)."""
    return np.diff(np.exp(edges_from_centres(ln_lam)))


def line_flux_and_centroid(lib, p, a):
    excess = (lib.flux[p] - a) * geometric_widths(lib.ln_lam)
    return excess.sum(), (lib.lam * excess).sum() / excess.sum()


# --- parse_miles_name -------------------------------------------------------------------

@pytest.mark.parametrize("name, expect", [
    ("Eun1.30Zm0.40T00.0631_iPp0.00_baseFe_linear_FWHM_variable.fits",
     dict(imf="un", imf_slope=1.30, metal=-0.40, age=0.0631, isochrone="Padova+00", iso_alpha=0.0,
          alpha=None, base_fe=True)),
    ("/data/emiles/Eun1.30Zp0.22T15.8489_iPp0.00_baseFe_linear_FWHM_variable.fits",
     dict(imf="un", imf_slope=1.30, metal=0.22, age=15.8489, isochrone="Padova+00")),
    ("Eun1.30Zm1.71T00.2512_iPp0.00_baseFe_linear_FWHM_variable.fits",
     dict(metal=-1.71, age=0.2512)),
    ("Mku1.30Zm0.25T13.5000_iTp0.40_Ep0.40.fits",
     dict(imf="ku", imf_slope=1.30, metal=-0.25, age=13.5, isochrone="BaSTI", iso_alpha=0.40,
          alpha=0.40, base_fe=False)),
    ("Ebi0.80Zp0.06T13.0000_iTp0.00_baseFe.fits", dict(imf="bi", imf_slope=0.80, metal=0.06, age=13.0)),
    ("ssp_Zp0.00T10.0000.fits", dict(imf=None, imf_slope=None, metal=0.0, age=10.0, isochrone=None)),
])
def test_parse_miles_name(name, expect):
    got = parse_miles_name(name)
    for k, v in expect.items():
        assert got[k] == (pytest.approx(v) if isinstance(v, float) else v), k
    assert math.copysign(1.0, got["metal"]) == (1.0 if expect["metal"] >= 0 else -1.0)  # no -0.0


@pytest.mark.parametrize("name", ["spectrum.fits", "Eun1.30Zx0.40T00.0631.fits",
                                  "Eun1.30Zm0.40_age1.fits", "Exx1.30Zm0.40T00.0631.fits"])
def test_parse_miles_name_rejects(name):
    with pytest.raises(ValueError, match="MILES"):
        parse_miles_name(name)


# --- from_fits_folder -------------------------------------------------------------------

def test_fits_folder_grid_order_and_metadata(miles_folder):
    lib = TemplateLibrary.from_fits_folder(miles_folder)
    assert lib.grid_shape == (3, 3) and lib.P == 9 and lib.T == NPIX   # velscale=None keeps N
    np.testing.assert_array_equal(lib.pop_axes["age"], AGES)
    np.testing.assert_array_equal(lib.pop_axes["metal"], METALS)
    assert list(lib.pop_axes) == ["age", "metal"]
    assert lib.axis_units == {"age": "Gyr", "metal": "dex [M/H]"}
    par = lib.params()
    for i, a in enumerate(AGES):
        for j, m in enumerate(METALS):
            p = i * len(METALS) + j                   # row-major: metal fastest
            assert (par["age"][p], par["metal"][p]) == (a, m)
            tags = parse_miles_name(lib.names[p])
            assert (tags["age"], tags["metal"]) == (a, m)
            assert lib.flux[p, 5] == pytest.approx(level(a, m), rel=1e-12)
    # Natural step: ln of the outer pixel edges over the pixel count.
    span = math.log((CRVAL + CDELT * (NPIX - 0.5)) / (CRVAL - 0.5 * CDELT))
    assert lib.velscale == pytest.approx(C_KMS * span / NPIX, rel=1e-12)
    assert lib.fwhm is None and lib.meta["fwhm_range"] == (2.51, 23.57)
    assert lib.flux_unit == MILES_FLUX_UNIT
    assert lib.meta["Isochrone"] == "Padova+00" and lib.meta["imf_slope"] == 1.30
    np.testing.assert_array_equal(lib.norm, 1.0)
    assert lib.mass_to_light is None and lib.masses is None


@pytest.mark.parametrize("velscale", [None, 60.0])
def test_fits_folder_log_rebin_keeps_continuum_and_line_flux(miles_folder, velscale):
    lib = TemplateLibrary.from_fits_folder(miles_folder, velscale=velscale)
    if velscale is not None:
        assert lib.velscale == velscale
        assert np.diff(lib.ln_lam) == pytest.approx(velscale / C_KMS, rel=1e-9)
    par = lib.params()
    far = np.abs(lib.lam - LINE) > 30 * SIGMA
    far[[0, -1]] = False                       # the red end pixel may be partly outside the input
    for p in range(lib.P):
        a = level(par["age"][p], par["metal"][p])
        np.testing.assert_allclose(lib.flux[p, far], a, rtol=1e-12)        # flat stays flat
        flux, centroid = line_flux_and_centroid(lib, p, a)
        assert flux == pytest.approx(a * EW, rel=1e-9)                     # line flux conserved
        # Redistributing piecewise-constant pixels moves a centroid by O(pixel²·g'), ~1% of
        # a pixel here; a half-pixel registration error would show as 0.45 Å.
        assert centroid == pytest.approx(LINE, abs=0.02)


def test_fits_folder_constant_fwhm_and_lam_range(tmp_path):
    lam = CRVAL + CDELT * np.arange(NPIX)
    for a in AGES[:2]:
        for m in METALS[:2]:
            write_fits(tmp_path / miles_name(a, m), synthetic_spectrum(lam, level(a, m)),
                       resolution="2.51 (Angstroms) FWHM")
    lib = TemplateLibrary.from_fits_folder(tmp_path, velscale=50.0, lam_range=(4800.0, 5200.0))
    assert lib.fwhm == 2.51 and lib.grid_shape == (2, 2)
    # Exactly EDGE_PIX pixels beyond the pixels holding each end of the range.
    e = np.exp(edges_from_centres(lib.ln_lam))
    assert e[EDGE_PIX] <= 4800.0 < e[EDGE_PIX + 1]
    assert e[-EDGE_PIX - 2] < 5200.0 <= e[-EDGE_PIX - 1]
    a = level(AGES[0], METALS[0])
    assert line_flux_and_centroid(lib, 0, a)[0] == pytest.approx(a * EW, rel=1e-9)
    with pytest.raises(ValueError, match=r"short by \d+ px .* on the blue side"):
        TemplateLibrary.from_fits_folder(tmp_path, velscale=50.0, lam_range=(3900.0, 5200.0))


def test_fits_folder_incomplete_grid_names_missing(miles_folder):
    (miles_folder / miles_name(2.5119, 0.22)).unlink()
    with pytest.raises(ValueError, match=r"full 3 ages × 3 \[M/H\] grid.*\(2\.5119, 0\.22\)"):
        TemplateLibrary.from_fits_folder(miles_folder)


def test_fits_folder_rejects_duplicates_bad_names_and_mismatched_grids(miles_folder):
    lam = CRVAL + CDELT * np.arange(NPIX)
    write_fits(miles_folder / miles_name(1.0, 0.0, imf="bi"), synthetic_spectrum(lam, 1.0))
    with pytest.raises(ValueError, match="same age 1.0 Gyr"):
        TemplateLibrary.from_fits_folder(miles_folder)
    # A narrower pattern selects one IMF again.
    assert TemplateLibrary.from_fits_folder(miles_folder, pattern="Eun*.fits").P == 9
    (miles_folder / "notes.fits").write_bytes(b"")
    with pytest.raises(ValueError, match="notes.fits"):
        TemplateLibrary.from_fits_folder(miles_folder, pattern="[Nn]*.fits")
    path = miles_folder / miles_name(1.0, 0.0)
    path.unlink()
    write_fits(path, synthetic_spectrum(lam, 1.0), crval=CRVAL + 0.45)
    with pytest.raises(ValueError, match="share one grid"):
        TemplateLibrary.from_fits_folder(miles_folder, pattern="Eun*.fits")


def test_fits_folder_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch_emiles"):
        TemplateLibrary.from_fits_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"matches 'Eun\*\.fits'"):
        TemplateLibrary.from_fits_folder(tmp_path, pattern="Eun*.fits")


# --- crop / rebin / normalise on a library built from arrays ----------------------------

VS = 50.0
GRID = log_grid(4000.0, 6000.0, VS)


def make_library(flux=None):
    flux = np.outer(np.arange(1.0, 5.0), 1.0 + 0.1 * np.sin(np.arange(GRID.size))) if flux is None else flux
    return TemplateLibrary(flux=flux, ln_lam=GRID, velscale=VS,
                           pop_axes={"age": [1.0, 10.0], "metal": [-0.4, 0.0]}, grid_shape=(2, 2),
                           axis_units={"age": "Gyr", "metal": "dex"}, fwhm=2.5, flux_unit="arb",
                           norm=np.ones(4), source="test library")


@pytest.mark.parametrize("lam_min, lam_max, vel_max", [(4500.0, 5500.0, 420.0), (4600.0, 5100.0, 0.0),
                                                        (4000.0 * math.exp(40 * VS / C_KMS), 5000.0, 100.0)])
def test_crop_margin(lam_min, lam_max, vel_max):
    lib = make_library()
    out = lib.crop(lam_min, lam_max, vel_max=vel_max)
    margin = math.ceil(vel_max / VS) + EDGE_PIX
    e = np.exp(edges_from_centres(GRID))
    i_lo = np.searchsorted(e, lam_min * (1 + 1e-12), side="right") - 1   # pixel holding lam_min
    i_hi = np.searchsorted(e, lam_max * (1 - 1e-12), side="left") - 1    # pixel holding lam_max
    np.testing.assert_array_equal(out.ln_lam, GRID[i_lo - margin:i_hi + margin + 1])
    np.testing.assert_array_equal(out.flux, lib.flux[:, i_lo - margin:i_hi + margin + 1])
    assert out.velscale == VS and out.names == lib.names


def test_crop_too_short_names_the_shortfall():
    lib = make_library()
    step = VS / C_KMS
    i_lo = math.floor(math.log(4005.0 / 4000.0) / step)          # pixel holding 4005 Å: 7
    need = math.ceil(500.0 / VS) + EDGE_PIX                     # 12 pixels below it
    short = need - i_lo
    angstrom = 4000.0 * (1 - math.exp(-short * step))
    with pytest.raises(ValueError, match=rf"short by {short} px \({angstrom:.2f} Å\) on the blue side") as err:
        lib.crop(4005.0, 5000.0, vel_max=500.0)
    assert "test library" in str(err.value) and "vel_max=500.0" in str(err.value)
    top = math.exp(edges_from_centres(GRID)[-1])
    with pytest.raises(ValueError, match=r"short by 2 px .* on the red side"):
        lib.crop(4500.0, top * math.exp(-0.5 * step), vel_max=0.0)   # inside the last pixel


def test_rebin_flat_line_and_identity():
    a = 3.0
    flux = np.vstack([np.full(GRID.size, a), synthetic_spectrum(np.exp(GRID), a)])
    lib = TemplateLibrary(flux=flux, ln_lam=GRID, velscale=VS, pop_axes={"age": [1.0, 2.0]},
                          grid_shape=(2,), axis_units={"age": "Gyr"}, fwhm=None, flux_unit="arb",
                          norm=np.ones(2))
    same = lib.rebin(VS)
    np.testing.assert_allclose(same.ln_lam, GRID, rtol=0, atol=1e-12)
    np.testing.assert_allclose(same.flux, flux, rtol=1e-10)
    coarse = lib.rebin(137.0)
    assert coarse.velscale == 137.0 and coarse.T == math.floor(GRID.size * VS / 137.0)
    np.testing.assert_allclose(coarse.flux[0], a, rtol=1e-12)
    flux_in = ((flux[1] - a) * geometric_widths(GRID)).sum()
    flux_out, centroid = line_flux_and_centroid(coarse, 1, a)
    assert flux_out == pytest.approx(flux_in, rel=1e-10)
    # Point samples on a log grid integrate the line to O(step²) ≈ 1e-9.
    assert flux_in == pytest.approx(a * EW, rel=1e-8)
    assert centroid == pytest.approx(LINE, abs=0.01)


def test_normalise_modes():
    flux = make_library().flux
    flux[0, :10] = 0.0                                # "no prediction" pixels are ignored
    lib = make_library(flux)
    glob = lib.normalise()                            # default: one global median
    ref = np.median(flux[flux > 0])
    np.testing.assert_allclose(glob.norm, ref)
    np.testing.assert_allclose(glob.flux, flux / ref)
    band = (lib.lam >= 5000.0) & (lib.lam <= 5500.0)
    each = glob.normalise("mean", lam_range=(5000.0, 5500.0), per_template=True)
    np.testing.assert_allclose(each.flux[:, band].mean(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(each.flux * each.norm[:, None], flux, rtol=1e-12)   # norm accumulates
    back = each.normalise("none")
    np.testing.assert_allclose(back.flux, flux, rtol=1e-12)
    np.testing.assert_array_equal(back.norm, 1.0)
    with pytest.raises(ValueError, match=r"no positive flux.*'age=1_metal=-0.4'"):
        lib.normalise("median", lam_range=(4000.0, 4003.0), per_template=True)
    with pytest.raises(ValueError, match="no pixel"):
        lib.normalise(lam_range=(7000.0, 8000.0))
    with pytest.raises(ValueError, match="mode"):
        lib.normalise("max")


def test_library_validation():
    with pytest.raises(ValueError, match="grid_shape"):
        TemplateLibrary(flux=np.ones((4, GRID.size)), ln_lam=GRID, velscale=VS,
                        pop_axes={"age": [1.0, 2.0, 3.0]}, grid_shape=(3,), axis_units={"age": "Gyr"},
                        fwhm=None, flux_unit="arb", norm=np.ones(4))
    with pytest.raises(ValueError, match="velscale"):
        TemplateLibrary(flux=np.ones((1, GRID.size)), ln_lam=GRID, velscale=2 * VS,
                        pop_axes={"age": [1.0]}, grid_shape=(1,), axis_units={"age": "Gyr"},
                        fwhm=None, flux_unit="arb", norm=np.ones(1))


# --- from_npz -------------------------------------------------------------------------------

def write_npz(path, wavelength_last=False, fwhm=2.51, **drop):
    lam = np.linspace(4000.0, 6000.0, 2001)
    ages, metals = np.array([1.0, 3.0, 10.0]), np.array([-0.5, 0.1])
    tem = np.empty((lam.size, ages.size, metals.size))
    for i, a in enumerate(ages):
        for j, m in enumerate(metals):
            tem[:, i, j] = synthetic_spectrum(lam, level(a, m))
    masses = 0.5 + 0.01 * np.arange(6.0).reshape(3, 2)
    data = dict(templates=np.moveaxis(tem, 0, -1) if wavelength_last else tem, lam=lam, ages=ages,
                metals=metals, masses=masses, fwhm=fwhm)
    for k in drop:
        data.pop(k)
    np.savez_compressed(path, **data)
    return ages, metals, masses


@pytest.mark.parametrize("wavelength_last", [False, True])
def test_npz_round_trip(tmp_path, wavelength_last):
    path = tmp_path / "ssp.npz"
    ages, metals, masses = write_npz(path, wavelength_last)
    lib = TemplateLibrary.from_npz(path, velscale=40.0)
    assert lib.grid_shape == (3, 2) and lib.velscale == 40.0 and lib.fwhm == 2.51
    np.testing.assert_array_equal(lib.pop_axes["age"], ages)
    np.testing.assert_array_equal(lib.pop_axes["metal"], metals)
    np.testing.assert_array_equal(lib.masses, masses.ravel())        # masses[i_age, i_metal] → p
    par = lib.params()
    for p in range(lib.P):
        a = level(par["age"][p], par["metal"][p])
        assert lib.flux[p, 3] == pytest.approx(a, rel=1e-12)
        assert line_flux_and_centroid(lib, p, a)[0] == pytest.approx(a * EW, rel=1e-9)
    assert lib.flux_unit == "L_sun/Angstrom" and lib.mass_to_light is None


def test_npz_variable_fwhm_and_errors(tmp_path):
    lam = np.linspace(4000.0, 6000.0, 2001)
    write_npz(tmp_path / "var.npz", fwhm=2.0 + lam / 1e4)
    lib = TemplateLibrary.from_npz(tmp_path / "var.npz", lam_range=(4500.0, 5000.0))
    assert lib.fwhm is None
    np.testing.assert_array_equal(lib.meta["fwhm_curve"][1], 2.0 + lam / 1e4)
    assert lib.lam[0] < 4500.0 and lib.lam[-1] > 5000.0
    write_npz(tmp_path / "nolam.npz", lam=True)
    with pytest.raises(ValueError, match=r"no 'lam' array \(keys present: \['ages', 'fwhm'"):
        TemplateLibrary.from_npz(tmp_path / "nolam.npz")
    write_npz(tmp_path / "noaxis.npz", metals=True)
    with pytest.raises(ValueError, match="does not match the axes"):
        TemplateLibrary.from_npz(tmp_path / "noaxis.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        TemplateLibrary.from_npz(tmp_path / "missing.npz")


# --- E-MILES fetch and cache, offline ------------------------------------------------------

EM_AGES = [0.0631, 0.0794, 0.1, 0.1259, 0.1585, 0.1995, 0.2512, 0.3162, 0.3981, 0.5012, 0.631,
           0.7943, 1.0, 1.2589, 1.5849, 1.9953, 2.5119, 3.1623, 3.9811, 5.0119, 6.3096, 7.9433,
           10.0, 12.5893, 15.8489]
EM_METALS = [-1.71, -1.31, -0.71, -0.40, 0.00, 0.22]


def fake_sdist(path, ages=EM_AGES):
    """A ppxf-8.1.0.tar.gz holding tiny E-MILES-named FITS files (and unrelated members)."""
    with tarfile.open(path, "w:gz") as tar:
        def add(name, payload):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        add("ppxf-8.1.0/ppxf/ppxf.py", b"# not wanted\n")
        for a in ages:
            for m in EM_METALS:
                buf = io.BytesIO()
                hdu = fits.PrimaryHDU(np.full(50, a))
                hdu.header.update(CRVAL1=5000.0, CDELT1=1.0, CRPIX1=1)
                hdu.writeto(buf)
                add(f"ppxf-8.1.0/ppxf/miles_models/{miles_name(a, m)}", buf.getvalue())


def serve(monkeypatch, sdist):
    """Make the download step copy ``sdist`` instead of calling PyPI."""
    calls = []

    def cmd(dest):
        calls.append(dest)
        return [sys.executable, "-c", "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])",
                str(sdist), str(dest)]
    monkeypatch.setattr(templates, "_download_cmd", cmd)
    return calls


def test_fetch_emiles_offline_caches_once(tmp_path, monkeypatch):
    sdist = tmp_path / "ppxf-8.1.0.tar.gz"
    fake_sdist(sdist)
    calls = serve(monkeypatch, sdist)
    cache = tmp_path / "cache"
    monkeypatch.setenv("CUBEFIT_CACHE_DIR", str(cache))
    folder = fetch_emiles()
    assert folder == emiles_dir() == cache / "emiles-ppxf-8.1.0"
    assert len(list(folder.glob("*.fits"))) == 150 and not (folder / "ppxf.py").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["emiles-ppxf-8.1.0"]   # no staging left
    lib = TemplateLibrary.from_emiles()
    assert lib.grid_shape == (25, 6) and len(calls) == 1                       # served from the cache
    np.testing.assert_allclose(lib.params()["age"], lib.flux[:, 10])          # flux = age (by design)
    fetch_emiles(force=True)
    assert len(calls) == 2 and len(list(folder.glob("*.fits"))) == 150


def test_fetch_emiles_failure_is_clear_and_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(templates, "_download_cmd", lambda dest: [
        sys.executable, "-c",
        "import sys; sys.stderr.write('ERROR: Could not find a version that satisfies ppxf==8.1.0'); sys.exit(1)"])
    with pytest.raises(RuntimeError) as err:
        fetch_emiles(cache_dir=tmp_path)
    msg = str(err.value)
    assert "exited with 1" in msg and "Could not find a version" in msg
    assert "pip download --no-deps --no-binary :all: ppxf==8.1.0" in msg and "from_fits_folder" in msg
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="is PyPI reachable"):
        TemplateLibrary.from_emiles(cache_dir=tmp_path)


def test_fetch_emiles_incomplete_archive(tmp_path, monkeypatch):
    sdist = tmp_path / "src" / "ppxf-8.1.0.tar.gz"
    sdist.parent.mkdir()
    fake_sdist(sdist, ages=EM_AGES[:3])
    serve(monkeypatch, sdist)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="holds 18 files .* expected 150"):
        fetch_emiles(cache_dir=cache)
    assert list(cache.iterdir()) == []


def test_from_emiles_without_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"fetch_emiles\(\)"):
        TemplateLibrary.from_emiles(cache_dir=tmp_path, fetch=False)


# --- E-MILES for real (PyPI) -----------------------------------------------------------------

@pytest.fixture(scope="module")
def emiles(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUBEFIT_CACHE_DIR", str(tmp_path_factory.mktemp("cubefit-cache")))
        folder = fetch_emiles()
        yield folder, TemplateLibrary.from_emiles(fetch=False)


@pytest.mark.network
def test_emiles_real_library(emiles):
    folder, lib = emiles
    assert lib.P == 150 and lib.grid_shape == (25, 6) and lib.T == 53689
    np.testing.assert_array_equal(lib.pop_axes["age"], EM_AGES)
    np.testing.assert_array_equal(lib.pop_axes["metal"], EM_METALS)
    # Linear grid 1680.2 + 0.9 k Å, k < 53689: outer pixel edges 1679.75 and 49999.85 Å.
    e = np.exp(edges_from_centres(lib.ln_lam))
    assert e[0] == pytest.approx(1679.75, abs=1e-6) and e[-1] == pytest.approx(49999.85, abs=1e-6)
    assert lib.velscale == pytest.approx(C_KMS * math.log(49999.85 / 1679.75) / 53689, rel=1e-12)
    assert np.all(np.isfinite(lib.flux)) and np.all(lib.flux >= 0)
    assert lib.fwhm is None and lib.meta["fwhm_range"] == (2.51, 23.57)
    assert lib.flux_unit == MILES_FLUX_UNIT
    # Young SSPs have no near-IR prediction: exact zeros above 8950 Å in 26 templates.
    assert np.count_nonzero(np.all(lib.flux[:, lib.lam > 9000.0] == 0, axis=1)) == 26
    # Mass table row "UN 1.30 0.0000 10.0000 ... M(*+remn)=0.7195 ... M(*+remn)/Lv=6.021".
    p = EM_AGES.index(10.0) * 6 + EM_METALS.index(0.0)
    assert lib.names[p].startswith("Eun1.30Zp0.00T10.0000")
    assert (lib.masses[p], lib.mass_to_light[p]) == (0.7195, 6.021)
    # Log-rebinning conserves the integrated flux of the raw file (independent read).
    raw = fits.getdata(folder / (lib.names[p] + ".fits")).astype(np.float64)
    assert (lib.flux[p] * geometric_widths(lib.ln_lam)).sum() == pytest.approx(raw.sum() * 0.9, rel=1e-10)
    # Units: L_V = M/(M/L_V) = 0.1195 L_sun per M_sun, and the Sun emits ≈1.39e-4 L_sun/Å at
    # 5500 Å, so the V-band flux density should be ≈1.66e-5 L_sun/Å/M_sun (colour terms: ~5%).
    v = (lib.lam > 5450.0) & (lib.lam < 5550.0)
    assert lib.flux[p, v].mean() == pytest.approx(0.7195 / 6.021 * 1.39e-4, rel=0.05)
