"""Import alias: ``CubeFit.<name>`` is ``cubefit.<name>``.

The CubeFit manual imports ``from CubeFit.hdf5_manager import H5Manager``; this
module makes those imports return the very same module objects as
``cubefit.hdf5_manager`` (no second copy, so classes compare equal).  It is a
single file rather than a package folder so that it can live beside ``cubefit/``
on case-insensitive file systems.
"""
import importlib
import importlib.abc
import importlib.util
import sys

import cubefit as _target

__path__ = []  # marks this module as a package so that submodule imports reach the finder
__version__ = _target.__version__


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, real_name):
        self.real_name = real_name

    def create_module(self, spec):
        return importlib.import_module(self.real_name)

    def exec_module(self, module):
        # The real module is already executed; the import system stores it under the alias.
        pass


class _AliasFinder(importlib.abc.MetaPathFinder):
    prefix = __name__ + "."

    def find_spec(self, fullname, path=None, target=None):
        if not fullname.startswith(self.prefix):
            return None
        real = _target.__name__ + fullname[len(__name__):]
        if importlib.util.find_spec(real) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(real))


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())


def __getattr__(name):
    return getattr(_target, name)
