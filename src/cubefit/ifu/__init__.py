"""From an observed IFU cube to the global fit (docs/ifu.md).

* :mod:`cubefit.ifu.readers` — MUSE, MaNGA and generic FITS cubes → :class:`IFUCube`;
* :mod:`cubefit.ifu.binning` — spatial bins to a target S/N (PowerBin), bin maps;
* :mod:`cubefit.ifu.losvds` — Gauss–Hermite moments → LOSVD histograms ``(S, V, C)``,
  LOSVDs imported from other sources;
* :mod:`cubefit.ifu.prepare` — binned spectra, LOSVDs and templates → a CubeFit file;
* :mod:`cubefit.ifu.bin_kinematics` — per-bin kinematics of one or more components;
* :mod:`cubefit.ifu.ingest` — all of it in one step (``cubefit ingest``, :mod:`cubefit.ifu.cli`);
* :mod:`cubefit.ifu.kinmaps` — maps of the per-bin kinematics for the report.
"""
