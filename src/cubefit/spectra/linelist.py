"""Emission-line lists: which lines are fitted, where they are and how they are tied.

A line list is an ECSV table (``astropy.table``), one row per line:

``name``       lower-case identifier (``oiii_5007``); the catalogue columns are its
               upper-case form (``OIII_5007_FLUX``).
``restwave``   rest-frame **vacuum** wavelength, Å.
``group``      kinematic group: every line of a group shares one velocity shift and one
               velocity dispersion.
``partner``    empty, or the name of the line whose flux this line's flux is tied to.
``ratio``, ``ratio_min``, ``ratio_max``
               ``flux(line) / flux(partner)``: fixed when ``ratio_min == ratio_max``,
               otherwise fitted inside the bounds starting from ``ratio``.
``label``      name used in figures;  ``source``  where the wavelength comes from.

The table's ``meta["groups"]`` defines each group: ``sigma_min``, ``sigma_max``,
``sigma_init`` (intrinsic dispersion, km/s), ``vshift_max`` (|velocity shift| bound,
km/s) and ``broad`` (True for the optional broad Balmer component, fitted only when
the broad-line test keeps it).  The packaged list
(``cubefit/spectra/resources/emlines.ecsv``) records its sources in its ``meta``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["Group", "Line", "LineList", "read_linelist", "default_linelist", "DEFAULT_LINELIST"]

DEFAULT_LINELIST = "emlines.ecsv"
"""File name of the packaged line list inside ``cubefit.spectra/resources``."""

_REQUIRED = ("name", "restwave", "group", "partner", "ratio", "ratio_min", "ratio_max")
_GROUP_KEYS = ("sigma_min", "sigma_max", "sigma_init", "vshift_max")


@dataclass(frozen=True)
class Group:
    """Kinematic group: bounds (km/s) of its shared dispersion and velocity shift."""

    name: str
    sigma_min: float
    sigma_max: float
    sigma_init: float
    vshift_max: float
    broad: bool = False


@dataclass(frozen=True)
class Line:
    """One emission line (see the module docstring for the fields)."""

    name: str
    restwave: float
    group: str
    partner: str = ""
    ratio: float = 0.0
    ratio_min: float = 0.0
    ratio_max: float = 0.0
    label: str = ""

    @property
    def column(self) -> str:
        """Catalogue column prefix (upper-case name)."""
        return self.name.upper()

    @property
    def tied(self) -> bool:
        return bool(self.partner)

    @property
    def fixed_ratio(self) -> bool:
        return self.tied and self.ratio_min == self.ratio_max


@dataclass(frozen=True)
class LineList:
    """An ordered set of :class:`Line` with their :class:`Group` definitions."""

    lines: tuple[Line, ...]
    groups: dict
    source: str = ""

    def __len__(self) -> int:
        return len(self.lines)

    def __iter__(self):
        return iter(self.lines)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(line.name for line in self.lines)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def without_broad(self) -> "LineList":
        """The list with the lines of broad groups removed."""
        keep = tuple(line for line in self.lines if not self.groups[line.group].broad)
        return LineList(keep, self.groups, self.source)


def _fail(path, msg: str) -> ValueError:
    return ValueError(f"line list {path}: {msg}")


def _groups_from_meta(meta, path) -> dict:
    raw = meta.get("groups")
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, "meta['groups'] is missing; define every kinematic group there with "
                          f"{', '.join(_GROUP_KEYS)} (km/s) and optionally broad: true")
    groups = {}
    for name, spec in raw.items():
        missing = [k for k in _GROUP_KEYS if k not in spec]
        if missing:
            raise _fail(path, f"group {name!r} lacks {missing}")
        g = Group(str(name), float(spec["sigma_min"]), float(spec["sigma_max"]), float(spec["sigma_init"]),
                  float(spec["vshift_max"]), bool(spec.get("broad", False)))
        if not (0 < g.sigma_min <= g.sigma_init <= g.sigma_max) or not g.vshift_max > 0:
            raise _fail(path, f"group {name!r}: need 0 < sigma_min ≤ sigma_init ≤ sigma_max and "
                              f"vshift_max > 0 (km/s), got {g}")
        groups[g.name] = g
    return groups


def read_linelist(path=None) -> LineList:
    """Read and validate a line list (ECSV); ``None`` reads the packaged one.

    Raises ``ValueError`` naming the file and the offending line when a column is
    missing, a name repeats, a group is undefined, a wavelength is not positive, a
    partner is unknown, tied to another tied line or in another group, or a ratio is
    not ``0 < ratio_min ≤ ratio ≤ ratio_max``.
    """
    from astropy.table import Table

    if path is None:
        ref = resources.files("cubefit.spectra") / "resources" / DEFAULT_LINELIST
        with resources.as_file(ref) as p:
            table = Table.read(p, format="ascii.ecsv")
        where = f"(packaged) {DEFAULT_LINELIST}"
    else:
        where = str(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"line list {where}: no such file; pass an ECSV file laid out as "
                                    "cubefit/spectra/resources/emlines.ecsv")
        try:
            table = Table.read(path, format="ascii.ecsv")
        except Exception as exc:  # astropy raises several types for a malformed file
            raise _fail(where, f"not a readable ECSV table ({exc})") from exc
    missing = [c for c in _REQUIRED if c not in table.colnames]
    if missing:
        raise _fail(where, f"missing columns {missing}; required: {list(_REQUIRED)}")
    groups = _groups_from_meta(table.meta, where)
    for name in table.colnames:                     # ECSV reads empty strings as masked
        if hasattr(table[name], "filled") and table[name].dtype.kind in "US":
            table[name] = table[name].filled("")
    lines = []
    for row in table:
        label = str(row["label"]) if "label" in table.colnames else str(row["name"])
        partner = str(row["partner"]).strip()
        line = Line(str(row["name"]).strip().lower(), float(row["restwave"]), str(row["group"]).strip(),
                    partner.lower(), float(row["ratio"]), float(row["ratio_min"]), float(row["ratio_max"]),
                    label)
        if not line.name or not (math.isfinite(line.restwave) and line.restwave > 0):
            raise _fail(where, f"line {line.name!r}: need a name and a positive vacuum wavelength (Å)")
        if line.group not in groups:
            raise _fail(where, f"line {line.name!r}: group {line.group!r} is not defined in meta['groups'] "
                               f"({sorted(groups)})")
        lines.append(line)
    names = [line.name for line in lines]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise _fail(where, f"repeated line names {dup}")
    by_name = dict(zip(names, lines))
    for line in lines:
        if not line.tied:
            continue
        p = by_name.get(line.partner)
        if p is None:
            raise _fail(where, f"line {line.name!r}: partner {line.partner!r} is not in the list")
        if p.tied:
            raise _fail(where, f"line {line.name!r}: partner {p.name!r} is itself tied to {p.partner!r}; "
                               "tie both to the same free line")
        if p.group != line.group:
            raise _fail(where, f"line {line.name!r}: partner {p.name!r} is in group {p.group!r}, not "
                               f"{line.group!r}; tied lines must share their kinematics")
        r = np.array([line.ratio_min, line.ratio, line.ratio_max])
        if not (np.all(np.isfinite(r)) and 0 < r[0] <= r[1] <= r[2]):
            raise _fail(where, f"line {line.name!r}: need 0 < ratio_min ≤ ratio ≤ ratio_max, got {r.tolist()}")
    return LineList(tuple(lines), groups, str(table.meta.get("description", where)))


_DEFAULT: LineList | None = None


def default_linelist() -> LineList:
    """The packaged line list (read once per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = read_linelist(None)
    return _DEFAULT
