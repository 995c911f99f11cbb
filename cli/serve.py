"""`fdn-index serve`: a warm query service with a JSON API and a viewer page."""

import click

from .options import index_option

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@click.command()
@index_option("Index directory written by `fdn-index build` (opened read-only).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Only this machine can connect unless you pass another, e.g. 0.0.0.0.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="TCP port (0 picks a free one).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(0, min_open=True),
    default=256,
    show_default=True,
    help="Largest accepted upload (all files of a case together).",
)
@click.option(
    "--cache-mb",
    type=click.FloatRange(0),
    default=512,
    show_default=True,
    help="Memory for the slice viewer's decoded cases (a BraTS-size case takes ~50 MB).",
)
@click.option(
    "--log-level",
    type=click.Choice(["critical", "error", "warning", "info", "debug"]),
    default="warning",
    show_default=True,
    help="uvicorn's log level.",
)
def serve(index_dir, host, port, max_upload_mb, cache_mb, log_level):
    """Serve an index over HTTP: the viewer at /, the API under /api, its docs at /docs.

    The index and its model are loaded once and kept warm; the index is never written.
    """
    import uvicorn

    from fdn.service import QueryService, create_app

    service = QueryService.open(
        index_dir,
        max_upload_bytes=int(max_upload_mb * 2**20),
        cache_bytes=int(cache_mb * 2**20),
    )
    warm = service.warm_up()
    # Against DNS rebinding: a loopback server answers only requests addressed to loopback names.
    allowed = ["127.0.0.1", "localhost"] if host in LOOPBACK else None
    app = create_app(service, allowed_hosts=allowed)
    sock = _bind(host, port)  # bound here, so that --port 0 can print the port it got
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(
        f"Index {index_dir}: {service.index.manifest.n_cases} cases, {service.index.ntotal} slices "
        f"(warm in {warm:.1f} s). Viewer: http://{shown}:{port}/  API docs: http://{shown}:{port}/docs"
    )
    if host not in LOOPBACK:
        click.echo(f"Warning: bound to {host}; other machines can reach this server.", err=True)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level)).run(sockets=[sock])


def _bind(host: str, port: int):
    """A listening TCP socket on (host, port); ClickException when the address cannot be had."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock
