"""DICOM in: MR studies from files or a PACS (DICOMweb) into a BraTS-layout archive.

Modules, one concept each: `geometry` (LPS↔RAS, slices → volume, resampling), `sequences`
(which series is t1, t1ce, t2, flair), `importer` (files → archive), `pacs` (DICOMweb sync),
`provenance` (the CASE_dicom.json sidecar), `export` (a NIfTI case → DICOM, for tests and
benchmarks). Import the modules themselves; this package imports nothing heavy on its own.
"""
