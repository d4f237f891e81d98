"""What each stored product was made from, and what to do when that changed.

A CubeFit file holds inputs (grids, templates, LOSVDs, data, mask, noise, population
axes) and products made from them: the rebin operator ``/R_T``, the hypercube
``/HyperCube/*``, the λ-weights, the fit ``/X_global`` + ``/Fit``, reconstructed model
cubes (``/ModelCube`` or any ``cubefit recon --out`` name), a mock's truth ``/Truth``
and the template masses ``/TemplateMass``.

Fingerprints
------------
:meth:`cubefit.store.H5Manager.populate_from_arrays` stores, as root attributes,

* ``input_digests``: JSON ``{dataset: SHA-256}`` of every input exactly as stored
  (float64 values, shape and dtype), and
* ``inputs_fingerprint``: the SHA-256 of that JSON — one key for "the inputs".

Every product records the key of what it was made from: ``inputs_fingerprint`` on
``/HyperCube``, the λ-weights, ``/X_global``, ``/Fit``, model cubes and ``/Truth``;
``templates_digest`` on ``/TemplateMass``; ``grids_fingerprint`` on ``/R_T``.  The fit
also records ``lambda_weights_sha256``, the digest of the stored λ-weights it used.

Rules
-----
* **Re-populating** with other inputs removes every product made from the old ones
  (:func:`drop_stale_products`, called inside the populate edit, so the new inputs and
  the removal land together) and logs which inputs changed and what was removed.
  Re-populating with identical inputs keeps everything.
* **Readers never reuse** a product whose key differs from the file's (a file whose
  inputs were replaced by hand or by an older version): :func:`stale_products` lists
  them with the reason (a product without a key was supplied by hand, e.g. the seed's
  bare ``/X_global``, and is taken as it is); the rebin operator and generated λ-weights are rebuilt, a stale hypercube is
  refused (rebuild it), a stale fit is refused by analyses and reconstruction and ignored
  as a warm start, and ``cubefit info`` reports it as stale.
"""
from __future__ import annotations

import hashlib
import json
import logging

import h5py
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["digest", "inputs_fingerprint", "file_fingerprint", "stale_products", "drop_stale_products",
           "require_fresh_fit", "dataset_digest", "x_sha256", "INPUT_NAMES"]

INPUT_NAMES = ("/Templates", "/TemPix", "/ObsPix", "/VelPix", "/LOSVD", "/DataCube", "/Mask", "/Noise",
               "/PopAxes")
"""Inputs covered by ``inputs_fingerprint``; ``/CompWeights`` is not, because a fit uses
orbit weights only when they are passed to it (and then records them in ``/Fit``)."""

# Products that older files hold without a recorded key: removed when the inputs change.
_KNOWN_PRODUCTS = ("/HyperCube", "/X_global", "/Fit", "/_FitStaging", "/ModelCube", "/Truth")


def digest(*arrays) -> str:
    """SHA-256 over arrays (dtype, shape and bytes of each; None hashes as a marker)."""
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.data)
    return h.hexdigest()


def inputs_fingerprint(inputs: dict) -> tuple[str, str]:
    """``(digests_json, fingerprint)`` of ``{dataset: array or None or {name: array}}``.

    A mapping (``/PopAxes``) is digested name by name in sorted order.
    """
    parts = {}
    for name, value in inputs.items():
        if isinstance(value, dict):
            parts[name] = digest(*[np.frombuffer(k.encode(), np.uint8) for k in sorted(value)],
                                 *[value[k] for k in sorted(value)])
        else:
            parts[name] = digest(value)
    text = json.dumps(parts, sort_keys=True)
    return text, hashlib.sha256(text.encode()).hexdigest()


def x_sha256(x) -> str:
    """SHA-256 of a solution's float64 values (the ``x_sha256`` of a model cube)."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(x, dtype=np.float64).ravel()).data).hexdigest()


def dataset_digest(ds: h5py.Dataset) -> str:
    """:func:`digest` of a stored dataset's values."""
    return digest(ds[...])


def _text(v) -> str:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    return "" if v is None else str(v)


def file_fingerprint(f: h5py.File) -> str:
    """The file's ``inputs_fingerprint`` ('' before the first populate)."""
    return _text(f.attrs.get("inputs_fingerprint", ""))


def _digests(f: h5py.File) -> dict:
    try:
        return json.loads(_text(f.attrs.get("input_digests", ""))) or {}
    except ValueError:
        return {}


def _made_from(obj) -> str:
    return _text(obj.attrs.get("inputs_fingerprint", ""))


def stale_products(f: h5py.File, lambda_dset: str = "/HyperCube/lambda_weights") -> dict:
    """``{product: reason}`` for every product of an open file that was not made from the
    inputs it now holds (see the module docstring); empty when everything is current."""
    fp = file_fingerprint(f)
    out = {}

    def check(name, key):           # no key: supplied by hand (e.g. the seed's /X_global)
        if key and key != fp:
            out[name] = "made from other inputs"

    if "/HyperCube" in f and "models" in f["/HyperCube"]:
        check("/HyperCube/models", _made_from(f["/HyperCube"]))
    if lambda_dset in f and "method" in f[lambda_dset].attrs:     # generated, not user-supplied
        check(lambda_dset, _made_from(f[lambda_dset]))
    if "/X_global" in f and "/Fit" in f:
        fit = f["/Fit"]
        check("/X_global", _made_from(fit))
        if "/X_global" not in out:
            used = _text(fit.attrs.get("lambda_weights_sha256", ""))
            if used not in ("", "none") and lambda_dset in f and dataset_digest(f[lambda_dset]) != used:
                out["/X_global"] = f"made with other λ-weights than the stored {lambda_dset}"
    if "/Truth" in f:
        check("/Truth", _made_from(f["/Truth"]))
    if "/TemplateMass" in f:
        key = _text(f["/TemplateMass"].attrs.get("templates_digest", ""))
        if key != _digests(f).get("/Templates", ""):
            out["/TemplateMass"] = "made for other templates than /Templates"
    x_key = x_sha256(f["/X_global"][...]) if "/X_global" in f else None

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and "x_sha256" in obj.attrs:     # a model cube
            if _made_from(obj) not in ("", fp):
                out["/" + name] = "made from other inputs"
            elif _text(obj.attrs["x_sha256"]) != x_key:
                out["/" + name] = "not made from the current /X_global"
    f.visititems(visit)
    return out


def drop_stale_products(f: h5py.File, new_fingerprint: str, new_digests: str,
                        lambda_dset: str = "/HyperCube/lambda_weights", where=None) -> tuple[list, list]:
    """Before new inputs are written into ``f``: remove every product made from inputs
    other than ``new_fingerprint`` and return ``(changed_inputs, removed)``.

    ``where`` names the file in the log (default ``f.filename``; an edit may work on a
    copy).  Identical inputs remove nothing.  Products without a recorded key (older files)
    are removed when the inputs change.  ``/TemplateMass`` is kept when the templates
    are unchanged.
    """
    old = file_fingerprint(f)
    if old == new_fingerprint:
        return [], []
    before, after = _digests(f), json.loads(new_digests)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)) \
        if before else ["(not recorded)"]
    removed = []

    def drop(name):
        if name in f:
            del f[name]
            removed.append(name)

    tagged = []
    f.visititems(lambda n, o: tagged.append("/" + n)
                 if "inputs_fingerprint" in o.attrs or "x_sha256" in o.attrs else None)
    for name in tagged:          # model cubes go with the fit they were made from
        if name in f and (_made_from(f[name]) != new_fingerprint or "x_sha256" in f[name].attrs):
            drop(name)
    for name in _KNOWN_PRODUCTS + (lambda_dset,):
        if name == "/HyperCube" and name in f:
            for child in list(f[name]):          # data_flux is an input summary: rewritten
                if child != "data_flux":
                    drop(f"{name}/{child}")
            for k in list(f[name].attrs):
                del f[name].attrs[k]
        else:
            drop(name)
    if "/TemplateMass" in f and before.get("/Templates") != after.get("/Templates"):
        drop("/TemplateMass")
    if removed:
        log.warning("%s: inputs changed (%s): removed %s, which were made from the old ones; "
                    "rebuild what you need (cubefit weights / build / solve / recon)",
                    where or f.filename, ", ".join(changed), ", ".join(removed))
    return changed, removed


def require_fresh_fit(f: h5py.File, what: str = "this") -> None:
    """``ValueError`` when the file's ``/X_global`` is stale (see :func:`stale_products`)."""
    stale = stale_products(f)
    if "/X_global" in stale:
        raise ValueError(f"{f.filename}: /X_global was {stale['/X_global']}; {what} would use a fit "
                         f"that does not belong to the file's data: run `cubefit solve {f.filename}` "
                         "again first")
