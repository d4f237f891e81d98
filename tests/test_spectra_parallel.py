"""Parallel fastspec runs: worker processes over targets (--mp), MPI ranks over files;
the catalogues must not depend on either, and a user's plain script must not re-run."""
import itertools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cubefit.spectra.parallel import weighted_partition
from conftest import file_digest
from spectra_fakes import needs_desi, small_templates, write_desi_pair

BIN = Path(sys.executable).parent


def _cli(*args, cwd=None, launcher=()):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "PMIX_"))}
    return subprocess.run([*launcher, str(BIN / "cubefit"), "fastspec", *map(str, args), "--quiet"],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_weighted_partition_within_lpt_bound_of_brute_force():
    """Every item exactly once, deterministic, and the largest group's load within
    Graham's LPT bound (4/3 - 1/(3n)) of the optimum found by trying every assignment."""
    rng = np.random.default_rng(1)
    for n_items, n in ((6, 2), (7, 3), (5, 4), (3, 5)):
        w = rng.integers(1, 500, n_items).astype(float)
        groups = weighted_partition(w, n)
        assert sorted(itertools.chain(*groups)) == list(range(n_items))
        assert groups == weighted_partition(w, n)
        best = min(max(np.bincount(a, weights=w, minlength=n))
                   for a in itertools.product(range(n), repeat=n_items))
        worst = max(w[g].sum() for g in groups)
        assert worst <= (4 / 3 - 1 / (3 * n)) * best + 1e-9
    assert weighted_partition([5, 1, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4, 5]]


@needs_desi
@pytest.mark.network
@pytest.mark.slow
def test_mp1_and_mp2_catalogues_identical(tmp_path):
    """Continuum, lines, joint refit and Monte Carlo (seeded per TARGETID) give the same
    bytes with 1 and 2 worker processes; the workers draw every target's QA figure."""
    rr, _, tids = write_desi_pair(tmp_path, 3, seed=4)
    tpl = small_templates(tmp_path / "tpl")
    out = {}
    for mp in (1, 2):
        out[mp] = tmp_path / f"mp{mp}.fits"
        qa = tmp_path / f"qa{mp}"
        r = _cli(rr, "-o", out[mp], "--mp", mp, "--models", "--templates", tpl, "--nmonte", 2, "--joint",
                 "--no-phot", "--qa", qa)
        assert r.returncode == 0, r.stderr
        assert f"{out[mp]}: 3 target(s)" in r.stdout
        assert sorted(os.listdir(qa)) == sorted(f"qa-{t}.png" for t in tids)
    assert file_digest(out[1]) == file_digest(out[2])
    from cubefit.spectra.catalog import read_catalog
    cat = read_catalog(out[1])
    assert list(cat["SPECPHOT"]["NMONTE"]) == [2, 2, 2] and list(cat["SPECPHOT"]["EMLINE_STATUS"]) == [0, 0, 0]
    assert "EMLINES_R" in cat["MODELS"].colnames and "HALPHA_FLUX_JOINT" in cat["SPECPHOT"].colnames


@needs_desi
@pytest.mark.network
def test_plain_script_with_workers_runs_once(tmp_path):
    """A script without a main guard calling fit_desi(mp=2): its top level runs once
    (the workers never import it), and the table equals the single-process one."""
    rr, _, _ = write_desi_pair(tmp_path, 2, seed=5)
    tpl = small_templates(tmp_path / "tpl")
    script = tmp_path / "plain.py"
    script.write_text(textwrap.dedent(f"""\
        import numpy as np
        from cubefit.spectra import fit_desi
        print("top level ran")
        t = fit_desi({str(rr)!r}, mp=2, templates={str(tpl)!r}, phot=False)
        t.write({str(tmp_path / 'mp2.fits')!r})
        print("rows", len(t))
        """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("top level ran") == 1 and "rows 2" in r.stdout
    from astropy.table import Table
    from cubefit.spectra import fit_desi
    one = fit_desi(rr, mp=1, templates=str(tpl), phot=False)
    two = Table.read(tmp_path / "mp2.fits", mask_invalid=False, character_as_bytes=False)
    for name in one.colnames:
        np.testing.assert_array_equal(np.asarray(one[name]), np.asarray(two[name]), err_msg=name)


@needs_desi
@pytest.mark.network
@pytest.mark.slow
def test_mpi_one_and_two_ranks_write_identical_catalogues(tmp_path):
    mpiexec = BIN / "mpiexec" if (BIN / "mpiexec").exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec: the test extra installs mpich (pip install -e '.[test]')")
    pytest.importorskip("mpi4py", reason="the test extra installs mpi4py")
    inputs = [write_desi_pair(tmp_path, n, name=f"4-1-{k}", seed=k)[0] for k, n in enumerate((2, 1, 1))]
    tpl = small_templates(tmp_path / "tpl")
    digests = {}
    for k in (1, 2):
        out = tmp_path / f"k{k}"
        r = _cli(*inputs, "-o", out, "--templates", tpl, "--nmonte", 2, "--no-phot", launcher=(str(mpiexec), "-n", str(k)))
        assert r.returncode == 0, r.stdout + r.stderr
        names = sorted(os.listdir(out))
        assert names == [f"fastspec-4-1-{i}.fits" for i in range(3)]
        digests[k] = [file_digest(out / n) for n in names]
    assert digests[1] == digests[2]
    from cubefit.spectra.catalog import read_catalog
    spec = read_catalog(out / names[0])["SPECPHOT"]
    assert list(spec["NMONTE"]) == [2, 2] and "HBETA_FLUX" in spec.colnames


@needs_desi
def test_mpi_bad_input_stops_every_rank_before_writing(tmp_path):
    mpiexec = BIN / "mpiexec" if (BIN / "mpiexec").exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("no mpiexec: the test extra installs mpich (pip install -e '.[test]')")
    pytest.importorskip("mpi4py", reason="the test extra installs mpi4py")
    good, _, _ = write_desi_pair(tmp_path, 1, name="good", crop=40)
    lonely = tmp_path / "redrock-lonely.fits"
    lonely.write_bytes(good.read_bytes())                    # its coadd does not exist
    out = tmp_path / "out"
    r = _cli(good, lonely, "-o", out, launcher=(str(mpiexec), "-n", "2"))
    assert r.returncode == 1
    assert r.stderr.count("coadd-lonely.fits: coadd not found") == 1     # rank 0 says why, once
    assert not out.exists()
