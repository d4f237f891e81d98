"""The seed's module names and the CubeFit import alias."""
import importlib

import cubefit


def test_alias_returns_the_same_module_objects():
    import CubeFit
    from CubeFit.hdf5_manager import H5Dims, H5Manager, open_h5
    import cubefit.store as store
    assert H5Manager is store.H5Manager and H5Dims is store.H5Dims and open_h5 is store.open_h5
    assert importlib.import_module("CubeFit.store") is store
    assert CubeFit.C_KMS == cubefit.C_KMS
    assert CubeFit.__version__ == cubefit.__version__


def test_alias_unknown_module_is_an_import_error():
    import pytest
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("CubeFit.no_such_module")


def test_every_seed_module_name_reexports_the_real_objects():
    """The manual's "Where to look in the code" names, importable as CubeFit.<name>, each
    giving the same objects as the modules that implement them."""
    from cubefit import plots, recon, runner, store, tracking, weights
    from cubefit import hypercube as hc
    expect = {
        "hdf5_manager": {"H5Manager": store.H5Manager, "H5Dims": store.H5Dims},
        "hypercube_builder": {"build_hypercube": hc.build_hypercube,
                              "convert_hypercube_norm": hc.convert_hypercube_norm},
        "cube_utils": {"ensure_lambda_weights": weights.ensure_lambda_weights},
        "pipeline_runner": {"PipelineRunner": runner.PipelineRunner},
        "fit_tracker": {"FitTracker": tracking.FitTracker},
        "kz_fitSpec": {"reconstruct": recon.reconstruct, "plot_spectra": plots.plot_spectra,
                       "spaxel_chi2": plots.spaxel_chi2},
    }
    for name, objects in expect.items():
        mod = importlib.import_module(f"CubeFit.{name}")
        assert mod is importlib.import_module(f"cubefit.{name}")
        for attr, obj in objects.items():
            assert getattr(mod, attr) is obj, (name, attr)
