"""Benchmark of `fdn-index serve` over HTTP on 127.0.0.1: query latency, upload latency, load.

    python -m benchmarks.serve --index demo/index           # the demo index (`make demo`)
    python -m benchmarks.serve                              # builds its own index under work/

The server runs as its own process (`fdn-index serve`, warm), so its RSS is measured apart from
the clients'. Three measurements:

1. (case, slice) queries, one client, keep-alive: p50/p99 of the round trip for single modes and
   for mode=all, and of slice PNGs (target: p50 <= 20 ms for a query on the demo index);
2. an uploaded BraTS-size external case (240 x 240 x 155, the four sequences gzipped, made by
   `fdn-index synth --cases 1` at the default size): p50 and max over a few uploads (target:
   <= 2 s);
3. a load test: N clients (16) for S seconds (30), each looping over random queries (80 %) and
   slice PNGs (20 %); error count (target 0), p50/p99 under load, throughput, server RSS
   before and after.

Writes benchmarks/results/serve/report.md and results.json.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import click

from benchmarks.chromium import headless_chromium
from benchmarks.options import out_option
from benchmarks.report import machine_info, machine_markdown, results_dir, write_json, write_text
from benchmarks.serve_measure import (
    ROOT,
    Server,
    brats_case,
    load_test,
    measure_queries,
    measure_upload,
    rss_bytes,
)


def screenshot(url: str, path: Path, query: str, width: int = 1400, height: int = 1040) -> Path:
    """A PNG of the viewer showing `query` (e.g. "case=SYN_010&mode=all"), taken with Debian's
    headless Chromium once every image has loaded."""
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chromium(width, height, "--hide-scrollbars") as driver:
        driver.get(f"{url}/?{query}")
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script(
                "const imgs = [...document.images].filter(i => i.getAttribute('src'));"
                "return document.querySelectorAll('.hit').length > 0 && "
                "imgs.every(i => i.complete && i.naturalWidth > 0);"
            )
        )
        time.sleep(0.3)
        path.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(path))
    return path


def default_index(work: Path) -> Path:
    """The demo index when `make demo` made it, else a demo-like index built under work/."""
    demo = ROOT / "demo" / "index"
    if (demo / "manifest.json").is_file():
        return demo
    from fdn.archive_index.build import build_index
    from fdn.synth import synthesize_archive

    archive = work / "archive"
    synthesize_archive(archive, n_cases=16, healthy_fraction=0.3, seed=7, size=64)
    index = work / "index"
    build_index(archive, ROOT / "models" / "cpu-64", index)
    return index


def report_markdown(r: dict) -> str:
    q, u, load = r["queries"], r["upload"], r["load"]
    during = [b for _, b in r["rss"]["during_load"]] or [r["rss"]["after_load"]]
    single = q["single mode"]["round_trip"]
    lines = [
        "# Query service: serve",
        "`fdn-index serve` over HTTP on 127.0.0.1, measured by `python -m benchmarks.serve"
        f"{' --index ' + r['index_arg'] if r['index_arg'] else ''}` (server and clients on the "
        "same machine; the server is its own process).",
        "## Machine",
        machine_markdown(r["machine"]),
        "## Index",
        f"- {r['index']}: {r['info']['n_cases']} cases, {r['info']['n_slices']} slices, model "
        f"{r['info']['preset']} ({r['info']['input_size']}², grid "
        f"{'×'.join(map(str, r['info']['grid']))}); server ready {r['startup_seconds']:.1f} s "
        "after launch (index opened, model loaded, one query per mode to load the kernels).",
        "## Targets",
        f"- (case, slice) query over HTTP, p50 <= 20 ms: **{'met' if single['p50_ms'] <= 20 else 'missed'}**"
        f" — p50 {single['p50_ms']:.1f} ms, p99 {single['p99_ms']:.1f} ms ({single['calls']} "
        "queries, one mode each, top-10, Hamming, lut).",
        f"- uploaded BraTS-size case <= 2 s: **{'met' if u['round_trip']['p50_ms'] <= 2000 else 'missed'}**"
        f" — p50 {u['round_trip']['p50_ms'] / 1e3:.2f} s, max {u['round_trip']['max_ms'] / 1e3:.2f} s "
        f"over {u['round_trip']['calls']} uploads of {u['upload_bytes'] / 2**20:.1f} MiB "
        "(mode=all).",
        f"- zero errors under load ({load['clients']} clients × {load['seconds']:.0f} s): "
        f"**{'met' if load['errors'] == 0 else 'missed'}** — {load['errors']} errors in "
        f"{load['requests']:,} requests.",
        f"- memory flat: server RSS {r['rss']['before_load'] / 2**20:.0f} MiB before the load "
        f"test, {r['rss']['after_load'] / 2**20:.0f} MiB after "
        f"({(r['rss']['after_load'] - r['rss']['before_load']) / 2**20:+.0f} MiB; sampled every "
        f"second during it: {min(during) / 2**20:.0f}–{max(during) / 2**20:.0f} MiB); "
        f"{r['rss']['after_start'] / 2**20:.0f} MiB once warm, "
        f"{r['rss']['after_uploads'] / 2**20:.0f} MiB after the uploads, "
        f"{r['rss']['before_load'] / 2**20:.0f} MiB after a first {load['clients']}-client "
        "round of 5 s (the thread pool and its malloc arenas grow once, to the concurrency).",
        "## Latency, one client (ms)",
        "| request | p50 | p99 | mean | max | calls | server-side p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, entry in q.items():
        rt = entry["round_trip"]
        server = entry.get("server", {}).get("p50_ms")
        lines.append(
            f"| {label} | {rt['p50_ms']:.1f} | {rt['p99_ms']:.1f} | {rt['mean_ms']:.1f} | "
            f"{rt['max_ms']:.1f} | {rt['calls']} | "
            f"{'—' if server is None else f'{server:.1f}'} |"
        )
    lines += [
        "",
        "Server-side is the `query_seconds` of the answer (the search and its bookkeeping); the "
        "rest of the round trip is HTTP, JSON and the client.",
        "## Upload of an external BraTS-size case",
        f"- {u['case']}: 240 × 240 × 155, four gzipped NIfTI files, {u['upload_bytes']:,} bytes; "
        f"queried at its largest-lesion slice {u['query_slice']}, mode=all.",
        f"- round trip p50 {u['round_trip']['p50_ms']:.0f} ms, max {u['round_trip']['max_ms']:.0f} ms; "
        f"of which reading, validating and preprocessing p50 "
        f"{u['read_and_preprocess']['p50_ms']:.0f} ms, encoding p50 {u['encode']['p50_ms']:.0f} ms "
        f"(the rest: the upload, the multipart parse, the temporary folder and the searches).",
        "## Load",
        f"- {load['clients']} clients, each a keep-alive connection in its own thread, for "
        f"{load['seconds']:.0f} s: random (case, slice) queries (80 %, random mode among normal, "
        "abnormal, sum, all and top-5/10/20) and slice PNGs (20 %).",
        f"- {load['requests']:,} requests in {load['wall_seconds']:.1f} s "
        f"({load['requests_per_second']:.0f}/s), {load['errors']} errors.",
        f"- under load: query p50 {load['query']['p50_ms']:.1f} ms, p99 {load['query']['p99_ms']:.1f} ms; "
        f"PNG p50 {load['png']['p50_ms']:.1f} ms, p99 {load['png']['p99_ms']:.1f} ms "
        "(16 clients on 2 shared cores queue behind each other: the latency under load is "
        "mostly waiting).",
    ]
    if load["error_samples"]:
        lines.append(f"- first errors: {load['error_samples']}")
    return "\n".join(lines) + "\n"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--index",
    default=None,
    help="Index directory [default: demo/index, else one built under the work folder].",
)
@click.option(
    "--queries",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="Queries per latency series.",
)
@click.option(
    "--uploads",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Uploads of the BraTS-size case.",
)
@click.option(
    "--clients",
    type=click.IntRange(1),
    default=16,
    show_default=True,
    help="Concurrent clients of the load test.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(0.1),
    default=30.0,
    show_default=True,
    help="Length of the load test.",
)
@click.option(
    "--screenshot",
    default=None,
    help="Only write a screenshot of the viewer to this PNG (with --query), then stop.",
)
@click.option(
    "--query",
    "view_query",
    default="mode=all",
    show_default=True,
    help="The viewer's URL query for --screenshot, e.g. case=SYN_010&slice=22&mode=all.",
)
@out_option("serve")
def main(index, queries, uploads, clients, seconds, screenshot, view_query, out) -> None:
    """HTTP latency, uploads and a bounded load test of `fdn-index serve` on 127.0.0.1."""
    sys.exit(
        run(
            SimpleNamespace(
                index=index,
                queries=queries,
                uploads=uploads,
                clients=clients,
                seconds=seconds,
                screenshot=screenshot,
                query=view_query,
                out=out,
            )
        )
    )


def run(args) -> int:
    """The benchmark; returns 0 when the load test saw no error."""
    if args.screenshot:
        server = Server(Path(args.index or ROOT / "demo" / "index"))
        try:
            server.wait()
            print(screenshot(server.url, Path(args.screenshot), args.query))
        finally:
            server.stop()
        return 0
    out = results_dir(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    index = Path(args.index) if args.index else default_index(work)
    case_dir = brats_case(work)
    server = Server(index)
    try:
        startup = server.wait()
        import httpx

        info = httpx.get(f"{server.url}/api/info").json()
        rss = {"after_start": rss_bytes(server.process.pid)}
        print(f"server ready in {startup:.1f} s at {server.url}", flush=True)
        queries = measure_queries(server.url, args.queries, seed=1)
        print(json.dumps(queries, indent=1), flush=True)
        upload = measure_upload(server.url, case_dir, args.uploads)
        print(json.dumps(upload, indent=1), flush=True)
        rss["after_uploads"] = rss_bytes(server.process.pid)
        # A first, short round at full concurrency grows the thread pool and its malloc arenas
        # and fills the image cache, so that the RSS before/after the measured round shows a leak.
        load_test(server.url, args.clients, 5.0, seed=2)
        rss["before_load"] = rss_bytes(server.process.pid)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.wait(1.0):
                samples.append((time.monotonic() - t0, rss_bytes(server.process.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load = load_test(server.url, args.clients, args.seconds, seed=3)
        stop.set()
        sampler.join()
        rss["after_load"] = rss_bytes(server.process.pid)
        rss["during_load"] = samples
        print(json.dumps(load, indent=1), flush=True)
    finally:
        server.stop()
    results = {
        "machine": machine,
        "index": str(index),
        "index_arg": args.index,
        "info": info,
        "startup_seconds": startup,
        "queries": queries,
        "upload": upload,
        "load": load,
        "rss": rss,
    }
    write_json(out / "results.json", results)
    write_text(out / "report.md", report_markdown(results))
    print(f"wrote {out / 'report.md'}")
    return 0 if load["errors"] == 0 else 1


if __name__ == "__main__":
    main()
