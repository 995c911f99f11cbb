"""Import throughput of `fdn-index import-dicom`, from files and from a real Orthanc PACS.

Run ``python -m benchmarks.import_dicom`` (``--help`` for options). It synthesizes a small
archive, exports every case as one DICOM MR study (four series of single-frame slices, oblique,
RescaleSlope 0.5; `fdn.dicom.export`), then measures, each ``--repeats`` times into a fresh
archive:

- **files**: `import_dicom(SOURCE, ARCHIVE)`: scan every header, decode, stack, resample onto
  the t1 grid, write four NIfTI files and the sidecar per study;
- **pacs**: `sync_pacs(URL, ARCHIVE)` against Orthanc (Debian's ``orthanc`` and
  ``orthanc-dicomweb``) on 127.0.0.1, seeded over its REST API: QIDO-RS, WADO-RS of every
  study, then the same import;
- **pacs, nothing new**: a second sync into the same archive (QIDO-RS only).

Throughput is studies/s and MB/s of DICOM files (the exported bytes, what a PACS stores).
The report goes to ``benchmarks/results/import-dicom/`` (report.md, results.json).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import click

from benchmarks import report as rp
from benchmarks.options import out_option
from benchmarks.orthanc import OrthancServer, available


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _row(name: str, seconds: list[float], n_studies: int, nbytes: int) -> dict:
    best = min(seconds)
    return {
        "path": name,
        "studies": n_studies,
        "mb": nbytes / 1e6,
        "seconds": seconds,
        "best_s": best,
        "studies_per_s": n_studies / best,
        "mb_per_s": nbytes / 1e6 / best,
    }


@click.command()
@click.option(
    "--cases", type=click.IntRange(1), default=6, show_default=True, help="Studies to import."
)
@click.option(
    "--size",
    type=click.IntRange(16),
    default=120,
    show_default=True,
    help="In-plane size of the synthetic volumes (slices: round(155·size/240)).",
)
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Timed runs of each path; the best is reported.",
)
@out_option("import-dicom")
def main(cases: int, size: int, repeats: int, out: str) -> None:
    """Measure DICOM import throughput from files and from Orthanc."""
    from fdn.dicom.export import export_archive
    from fdn.dicom.importer import import_dicom
    from fdn.dicom.pacs import sync_pacs
    from fdn.synth import synthesize_archive

    out_dir = rp.results_dir(out)
    info = rp.machine_info()
    work = Path(tempfile.mkdtemp(prefix="fdn-bench-dicom-"))
    rows, notes = [], []
    try:
        synthesize_archive(work / "nifti", cases, 0.5, seed=0, size=size)
        export_s, _ = _timed(lambda: export_archive(work / "nifti", work / "dicom"))
        files = sorted(p for p in (work / "dicom").rglob("*.dcm"))
        nbytes = sum(p.stat().st_size for p in files)
        click.echo(
            f"{cases} studies, {len(files)} files, {nbytes / 1e6:.1f} MB (export {export_s:.1f} s)"
        )

        seconds = []
        for run in range(repeats):
            archive = work / f"files-{run}"
            elapsed, report = _timed(lambda a=archive: import_dicom(work / "dicom", a))
            assert len(report.imported) == cases, report
            seconds.append(elapsed)
        rows.append(_row("files", seconds, cases, nbytes))

        if available():
            server = OrthancServer(work / "orthanc")
            try:
                upload_s, _ = _timed(lambda: server.upload(work / "dicom"))
                url = f"{server.url}/dicom-web"
                seconds, again = [], []
                for run in range(repeats):
                    archive = work / f"pacs-{run}"
                    elapsed, report = _timed(lambda a=archive: sync_pacs(url, a))
                    assert len(report.imported) == cases, report
                    seconds.append(elapsed)
                    elapsed, report = _timed(lambda a=archive: sync_pacs(url, a))
                    assert not report.imported and len(report.already) == cases
                    again.append(elapsed)
                rows.append(_row("pacs (QIDO-RS + WADO-RS)", seconds, cases, nbytes))
                rows.append(
                    {
                        **_row("pacs, nothing new (QIDO-RS)", again, 0, 0),
                        "studies_per_s": None,
                        "mb_per_s": None,
                    }
                )
                notes.append(
                    f"Seeding Orthanc over REST (POST /instances, one request per "
                    f"file): {upload_s:.1f} s, {nbytes / 1e6 / upload_s:.1f} MB/s."
                )
            finally:
                server.stop()
        else:
            notes.append("Orthanc is not installed here: the PACS path was not measured.")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {
        "machine": info,
        "cases": cases,
        "size": size,
        "repeats": repeats,
        "files": len(files),
        "dicom_bytes": nbytes,
        "export_s": export_s,
        "rows": rows,
        "notes": notes,
    }
    rp.write_json(out_dir / "results.json", results)
    table = rp.markdown_table(
        ["path", "studies", "MB", "best s", "studies/s", "MB/s"],
        [
            [r["path"], r["studies"], r["mb"], r["best_s"], r["studies_per_s"], r["mb_per_s"]]
            for r in rows
        ],
    )
    slices = round(155 * size / 240)
    text = (
        "# DICOM import throughput\n\n"
        f"`python -m benchmarks.import_dicom --cases {cases} --size {size} --repeats "
        f"{repeats}`\n\n"
        f"{cases} synthetic studies, each four MR series of {slices} single-frame "
        f"{size}×{size} uint16 slices (oblique, RescaleSlope 0.5): {len(files)} files, "
        f"{nbytes / 1e6:.1f} MB of DICOM. Best of {repeats} runs, each into a fresh archive; "
        "MB/s counts the DICOM bytes.\n\n" + table + "\n"
        "- *files*: scan every header, decode, stack along the normal, resample onto the t1 "
        "grid (the identity here: one grid per study), write four gzipped NIfTI files and the "
        "sidecar per study.\n"
        "- *pacs*: the same behind QIDO-RS and WADO-RS (dicomweb-client) against Orthanc on "
        "127.0.0.1; each study is decoded from the WADO-RS response in memory.\n"
        "- *nothing new*: a second sync; it lists the studies and fetches none.\n"
        + "".join(f"- {note}\n" for note in notes)
        + "\n## Machine\n\n"
        + rp.machine_markdown(info)
    )
    rp.write_text(out_dir / "report.md", text)
    click.echo(text)


if __name__ == "__main__":
    main()
