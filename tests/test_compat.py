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
