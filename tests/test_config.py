"""cubefit.config: the manual's knobs, environment overrides, typo warnings."""
import dataclasses
import warnings

import pytest

from cubefit.config import Config, known_names

# The CubeFit manual's environment tables (variable -> documented default).
MANUAL_DEFAULTS = {
    "HDF5_USE_FILE_LOCKING": "FALSE",
    "CUBEFIT_RDCC_NSLOTS": 400003, "CUBEFIT_RDCC_NBYTES": 4294967296, "CUBEFIT_RDCC_W0": 0.9,
    "CUBEFIT_RDCC_SLOTS": 1000003, "CUBEFIT_RDCC_BYTES": 268435456,
    "CUBEFIT_MP_CTX": "forkserver", "KMP_INIT_AT_FORK": "FALSE",
    "CUBEFIT_BT_STEPS": 3, "CUBEFIT_BT_FACTOR": 0.5, "CUBEFIT_TRUST_TAU": 0.7, "CUBEFIT_EPS": 1e-12,
    "CUBEFIT_ZERO_COL_REL": 1e-12, "CUBEFIT_ZERO_COL_ABS": 1e-24, "CUBEFIT_DEBUG_SAFE": False,
    "CUBEFIT_NNLS_PROP_PER_BAND": 6,
    "CUBEFIT_TILE_BT_STEPS": 6, "CUBEFIT_TILE_BT_FACTOR": 0.5, "CUBEFIT_GLOBAL_TAU": 0.5,
    "CUBEFIT_GLOBAL_ENERGY_BLEND": 1e-3, "CUBEFIT_NNLS_ENABLE": True, "CUBEFIT_NNLS_EVERY": 1,
    "CUBEFIT_NNLS_MAX_COLS": 128, "CUBEFIT_NNLS_MAX_BYTES": 1000000000, "CUBEFIT_NNLS_SUB_L": 0,
    "CUBEFIT_NNLS_SOLVER": "nnls", "CUBEFIT_NNLS_MAX_ITER": 50, "CUBEFIT_NNLS_MIN_IMPROVE": 0.999,
    "CUBEFIT_LAMBDA_WEIGHTS_ENABLE": True, "CUBEFIT_LAMBDA_WEIGHTS_DSET": "/HyperCube/lambda_weights",
    "CUBEFIT_LAMBDA_MIN_W": 1e-6, "CUBEFIT_LAMBDA_WEIGHTS_AUTO": True,
    "FITTRACKER_START": "spawn", "CUBEFIT_TRACKER_QSIZE": 8192, "CUBEFIT_TRACKER_FLUSH_EVERY": 128,
    "CUBEFIT_TRACKER_FLUSH_SEC": 5.0, "CUBEFIT_RMSE_STRIDE": 16,
}


def test_every_manual_knob_is_a_field_with_the_manual_default():
    cfg = Config.from_env(environ={})
    by_env = {f.metadata["env"]: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    for name, default in MANUAL_DEFAULTS.items():
        assert name in by_env, name
        assert by_env[name] == default, name
        assert type(by_env[name]) is type(default), name


def test_environment_overrides_and_types():
    env = {"CUBEFIT_BT_STEPS": "7", "CUBEFIT_RDCC_NBYTES": "1e9", "CUBEFIT_RDCC_W0": "0.25",
           "CUBEFIT_NNLS_ENABLE": "0", "CUBEFIT_DEBUG_SAFE": "true", "CUBEFIT_NNLS_SOLVER": "fista",
           "HDF5_USE_FILE_LOCKING": "TRUE"}
    cfg = Config.from_env(environ=env)
    assert (cfg.bt_steps, cfg.rdcc_nbytes, cfg.rdcc_w0) == (7, 1000000000, 0.25)
    assert cfg.nnls_enable is False and cfg.debug_safe is True
    assert cfg.nnls_solver == "fista" and cfg.hdf5_use_file_locking == "TRUE"
    # Explicit keywords beat the environment.
    assert Config.from_env(environ=env, bt_steps=2).bt_steps == 2


def test_real_environment_is_read(monkeypatch):
    monkeypatch.setenv("CUBEFIT_TRACKER_QSIZE", "99")
    from cubefit.config import get_config
    assert get_config().tracker_qsize == 99


@pytest.mark.parametrize("name, value", [("CUBEFIT_BT_STEPS", "three"), ("CUBEFIT_RDCC_W0", "x"),
                                         ("CUBEFIT_NNLS_ENABLE", "maybe"), ("CUBEFIT_BT_STEPS", "2.5")])
def test_unparsable_value_names_the_variable(name, value):
    with pytest.raises(ValueError, match=name):
        Config.from_env(environ={name: value})


def test_unknown_variable_warns_with_closest_name():
    with pytest.warns(UserWarning, match="did you mean CUBEFIT_RDCC_NBYTES"):
        Config.from_env(environ={"CUBEFIT_RDCC_NBYTE": "5"})
    with pytest.warns(UserWarning, match="CUBEFIT_LAMBDA_MIN_W"):
        Config.from_env(environ={"CUBEFIT_LAMBDA_MINW": "0.1"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Config.from_env(environ={"CUBEFIT_BT_STEPS": "3", "OTHER_THING": "1"})


def test_unknown_keyword_is_a_type_error_with_hint():
    with pytest.raises(TypeError, match="bt_steps"):
        Config.from_env(environ={}, bt_step=3)


def test_cache_path(monkeypatch, tmp_path):
    assert Config.from_env(environ={"CUBEFIT_CACHE_DIR": str(tmp_path)}).cache_path == tmp_path
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Config.from_env(environ={}).cache_path == tmp_path / "xdg" / "cubefit"


def test_names_unique_and_described():
    names = known_names()
    assert len(names) == len(set(names))
    rows = Config.from_env(environ={}).describe()
    assert all(r[4] for r in rows) and len(rows) == len(names)
