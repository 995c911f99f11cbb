"""`fdn-index serve`: a warm query service with a JSON API and a viewer page."""

import os

import click

from .options import index_option


@click.command()
@index_option("Index directory written by `fdn-index build` (opened read-only).")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind. Only this machine can connect unless you pass another, e.g. 0.0.0.0; "
    "any address off loopback requires --token-file or FDN_SERVE_TOKEN.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="TCP port (0 picks a free one, and the banner prints it).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File whose first line is the token every request must carry (Authorization: Bearer, "
    "or the cookie of the /login page); at least 16 characters. Else the environment variable "
    "FDN_SERVE_TOKEN. Required off loopback.",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="Another host name the server answers to (repeatable), e.g. the public name of a "
    "reverse proxy. Loopback names and the bound address are always answered.",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(0, min_open=True),
    default=256,
    show_default=True,
    help="Largest accepted upload (all files of a case together).",
)
@click.option(
    "--max-voxels",
    type=click.IntRange(1),
    default=256**3,
    show_default=True,
    help="Largest accepted volume of an upload, in voxels, checked from its header before any "
    "data is decompressed. Reading a case costs about 40 bytes per voxel of one volume.",
)
@click.option(
    "--upload-timeout",
    type=click.FloatRange(0, min_open=True),
    default=10,
    show_default=True,
    help="Seconds an upload may pause; past them it must also average 32 KiB/s, or it is "
    "dropped (408) and its slot freed.",
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
def serve(
    index_dir,
    host,
    port,
    token_file,
    allowed_hosts,
    max_upload_mb,
    max_voxels,
    upload_timeout,
    cache_mb,
    log_level,
):
    """Serve an index over HTTP: the viewer at /, the API under /api, its docs at /docs.

    The index and its model are loaded once and kept warm (one query per mode before the
    first connection is accepted); the index is never written. Other sites' pages cannot post
    to it, and it answers only requests addressed to its own names. See docs/serve.md for a
    set-up behind a TLS reverse proxy.
    """
    import uvicorn

    from fdn.service import QueryService, create_app
    from fdn.service.guard import HostPolicy, check_bind, is_loopback, load_token, server_url

    token = load_token(token_file, os.environ.get("FDN_SERVE_TOKEN"))
    check_bind(host, token)
    service = QueryService.open(
        index_dir,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_voxels=max_voxels,
        cache_bytes=int(cache_mb * 2**20),
        upload_idle_seconds=upload_timeout,
    )
    warm = service.warm_up()
    app = create_app(service, allowed_hosts=HostPolicy.for_bind(host, allowed_hosts), token=token)
    sock = _bind(host, port)  # bound here, so that --port 0 can print the port it got
    url = server_url(host, sock.getsockname()[1])
    click.echo(
        f"Index {index_dir}: {service.index.manifest.n_cases} cases, {service.index.ntotal} slices "
        f"(warm in {warm:.1f} s). Viewer: {url}  API docs: {url}docs"
        + ("" if token is None else "  (token required)")
    )
    if not is_loopback(host):
        click.echo(
            f"Note: bound to {host}; other machines can connect (with the token). Plain HTTP: "
            "put a TLS reverse proxy in front (docs/serve.md).",
            err=True,
        )
    # no "server: uvicorn" header: what runs here is nobody else's business
    config = uvicorn.Config(app, log_level=log_level, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


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
