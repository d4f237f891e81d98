"""Property-based tests of the input validation (hypothesis).

Each example takes the valid inputs of a small mock, damages one of them (special values,
wrong shape or dtype, arbitrary arrays, unsorted / non-uniform / log10 grids, scaling) and
re-populates an existing, populated file with it.  The property: the call is either

* refused with a ``ValueError`` naming the damaged dataset (or the one it must agree
  with), the file byte-for-byte as before and no temporary file left, or
* accepted, the stored input equal to what was given, and the fit runs and reports
  honestly: finite non-negative ``x`` and, when it claims success, light fractions that
  are finite and sum to 1.

The examples are derandomised (the same every run) and few, for CI (40 and 25;
``RELIABILITY_EXAMPLES=N`` runs N and 5N/8).  With ``RELIABILITY_COUNTS_JSON=path.json``
the outcome counts are written there (the table in docs/reliability.md comes
from it).
"""
import collections
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from cubefit.runner import PipelineRunner
from cubefit.store import H5Manager


EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "40"))
SETTINGS = settings(derandomize=True, max_examples=EXAMPLES, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ARRAYS = {"datacube": "/DataCube", "noise": "/Noise", "losvd": "/LOSVD", "templates": "/Templates",
          "mask": "/Mask"}
GRIDS = {"tem_pix": "/TemPix", "obs_pix": "/ObsPix", "vel_pix": "/VelPix"}
# A damaged input may be reported through a dataset it must agree with.
ALSO = {"/ObsPix": ("/TemPix", "/DataCube", "/Mask", "/Noise"), "/VelPix": ("/LOSVD", "/TemPix"),
        "/LOSVD": ("/VelPix",), "/TemPix": ("/Templates",)}
SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e-300, 1e300, 5e-324]

COUNTS = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _write_counts():
    yield
    out = os.environ.get("RELIABILITY_COUNTS_JSON")
    if out:
        Path(out).write_text(json.dumps(dict(sorted(COUNTS.items())), indent=1))


@pytest.fixture(scope="module")
def base(small_mock, tmp_path_factory):
    """A populated, rebinned file of the small mock, and the valid inputs."""
    m = small_mock
    path = tmp_path_factory.mktemp("prop") / "base.h5"
    kw = dict(losvd=m.losvd, datacube=m.datacube, templates=m.templates, mask=m.mask,
              vel_pix=m.vel_pix, noise=m.noise, pop_axes=m.pop_axes)
    mgr = H5Manager(path, tem_pix=m.tem_pix, obs_pix=m.obs_pix)
    mgr.init_base(m.dims)
    mgr.populate_from_arrays(**kw)
    mgr.ensure_rebin_and_resample()
    return path, kw, dict(tem_pix=m.tem_pix, obs_pix=m.obs_pix)


def file_digest(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def _dataset_hashes(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        out["/"] = repr(sorted((k, repr(v)) for k, v in f.attrs.items()))
        f.visititems(lambda n, o: out.__setitem__(
            n, hashlib.sha256(np.ascontiguousarray(o[...]).tobytes()).hexdigest()
            if isinstance(o, h5py.Dataset) else None))
    return out


# ----------------------------------------------------------------------------- damage

@st.composite
def damaged_array(draw, arr):
    """A damaged copy of ``arr`` and a label of the damage."""
    kind = draw(st.sampled_from(["special", "shape", "dtype", "scale", "arbitrary"]))
    a = np.array(arr, copy=True)
    if kind == "special":
        n = draw(st.integers(1, 3))
        flat = a.reshape(-1).astype(np.float64)
        for _ in range(n):
            flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(SPECIAL))
        return flat.reshape(a.shape), "special values"
    if kind == "shape":
        how = draw(st.sampled_from(["drop", "add", "transpose", "ravel", "newaxis"]))
        axis = draw(st.integers(0, a.ndim - 1))
        if how == "drop":
            return np.delete(a, -1, axis=axis), "one row/column fewer"
        if how == "add":
            return np.concatenate([a, np.take(a, [-1], axis=axis)], axis=axis), "one row/column more"
        if how == "transpose":
            perm = draw(st.permutations(range(a.ndim)))
            return np.transpose(a, perm), f"axes {tuple(perm)}"
        return (a.ravel(), "flattened") if how == "ravel" else (a[None], "extra axis")
    if kind == "dtype":
        dt = draw(st.sampled_from(["float32", "int64", "bool", "complex128", "str", "object"]))
        return a.astype(dt), f"dtype {dt}"
    if kind == "scale":
        factor = draw(st.sampled_from([0.0, -1.0, 1e-200, 1e200, 1e-3, 1e3]))
        return a * factor, f"scaled by {factor:g}"
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    dtype = draw(st.sampled_from([np.float64, np.int32, np.complex64, np.bool_, "U3"]))
    return draw(hnp.arrays(dtype, shape)), "arbitrary array"


@st.composite
def damaged_grid(draw, x):
    kind = draw(st.sampled_from(["unsorted", "non-uniform", "log10", "linear", "shift", "special"]))
    g = np.array(x, dtype=np.float64)
    step = float(np.diff(g).mean())
    i = draw(st.integers(1, g.size - 2))
    if kind == "unsorted":
        g[i], g[i + 1] = g[i + 1], g[i]
    elif kind == "non-uniform":
        g[i] += draw(st.sampled_from([1e-3, 0.1, 0.5])) * step
    elif kind == "log10":
        g = g / np.log(10.0)
    elif kind == "linear":
        g = np.exp(g)
    elif kind == "shift":
        g = g + draw(st.sampled_from([-0.5, 0.25, 1.0])) * step
    else:
        g[i] = draw(st.sampled_from([np.nan, np.inf]))
    return g, kind


# ----------------------------------------------------------------------------- property

def _check(base, arg, name, value, label, grids=None):
    path0, kw, grids0 = base
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "g.h5"
        shutil.copy(path0, path)
        before, hashes = file_digest(path), _dataset_hashes(path)
        args = dict(kw)
        g = dict(grids0)
        if arg in GRIDS and arg != "vel_pix":
            g[arg] = value
        else:
            args[arg] = value
        try:
            mgr = H5Manager(path, **g)
            mgr.populate_from_arrays(**args)
        except ValueError as exc:
            msg = str(exc)
            assert any(n in msg for n in (name,) + ALSO.get(name, ())), (label, msg)
            assert file_digest(path) == before and _dataset_hashes(path) == hashes, label
            assert sorted(p.name for p in Path(tmp).iterdir()) == ["g.h5"], label
            COUNTS[f"{name}|{label}|refused"] += 1
            return
        _stored_equals_given(path, arg, name, value)
        _fit(path, label)
        COUNTS[f"{name}|{label}|accepted, fitted"] += 1


def _stored_equals_given(path, arg, name, value):
    with h5py.File(path, "r") as f:
        if arg in ("datacube", "noise"):
            v = np.asarray(value, dtype=np.float64)
            stored = f[name][...]
            assert np.array_equal(stored, v if v.shape == stored.shape else v.T)
        elif arg in ("losvd", "mask", "vel_pix", "obs_pix"):
            assert np.array_equal(f[name][...], np.asarray(value).astype(f[name].dtype))


def _fit(path, label):
    mgr = H5Manager(path)
    mgr.ensure_rebin_and_resample()
    try:
        x, stats = PipelineRunner(path).solve_all_mp_batched(track=False)
    except ValueError as exc:           # data norm needs positive mean flux where there is light
        assert "data_flux" in str(exc) and "norm_mode='model'" in str(exc), (label, str(exc))
        COUNTS["fit needed norm_mode='model' (no positive flux for the data norm)"] += 1
        x, stats = PipelineRunner(path).solve_all_mp_batched(track=False, norm_mode="model")
    COUNTS[f"fit status {stats['status']}"] += 1
    assert np.all(np.isfinite(x)) and np.all(x >= 0), label
    assert np.isfinite(stats["cost"]), label
    if stats["success"]:
        fr = np.asarray(stats["light_fractions"])
        assert np.all(np.isfinite(fr)) and fr.sum() == pytest.approx(1.0), label
    else:
        assert stats["status"] in (-2, 0, 2) and stats["message"], label


@SETTINGS
@given(data=st.data())
def test_damaged_arrays_are_refused_by_name_or_fitted(base, data):
    arg = data.draw(st.sampled_from(sorted(ARRAYS)), label="input")
    value, label = data.draw(damaged_array(base[1][arg]), label="damage")
    _check(base, arg, ARRAYS[arg], value, label)


@settings(SETTINGS, max_examples=max(1, EXAMPLES * 5 // 8))
@given(data=st.data())
def test_damaged_grids_are_refused_by_name_or_fitted(base, data):
    arg = data.draw(st.sampled_from(sorted(GRIDS)), label="grid")
    src = base[1]["vel_pix"] if arg == "vel_pix" else base[2][arg]
    value, label = data.draw(damaged_grid(src), label="damage")
    if arg == "vel_pix" and label in ("log10", "linear"):
        label = "rescaled"               # a velocity grid has no wavelength meaning
    _check(base, arg, GRIDS[arg], value, label)
