"""``lookalike serve``: the HTTP API and search page over an index."""

from __future__ import annotations

import json
import sys

import click

from lookalike.api import Index
from lookalike.cli.options import index_arg


@click.command()
@index_arg
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--max-upload-bytes", default=10 * 1024 * 1024, show_default=True,
              type=click.IntRange(1), help="Larger uploads are refused with 413.")
@click.option("--max-pixels", default=40_000_000, show_default=True, type=click.IntRange(1),
              help="Uploaded photos with more pixels are refused with 413.")
@click.option("--max-decode-pixels", default=40_000_000, show_default=True,
              type=click.IntRange(1),
              help="Pixels of uploaded photos decoded at once; more wait their turn (memory "
                   "stays bounded under a burst of large photos).")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Server processes sharing the port. Each maps the same vectors from disk "
                   "and follows the index folder's journal, so a change made through any of "
                   "them is served by all within a second.")
def serve(index: str, host: str, port: int, max_upload_bytes: int, max_pixels: int,
          max_decode_pixels: int, workers: int) -> None:
    """Serve INDEX over HTTP (API docs at /docs); --port 0 takes a free port and prints it.
    Items that other processes add or remove are served within a second."""
    import os
    import socket

    import uvicorn

    from lookalike.server import create_app
    from lookalike.server.app import SERVE_ENV

    options = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels,
               "max_decode_pixels": max_decode_pixels}
    if workers == 1:
        app = create_app(index, **options)
    else:  # each worker makes its own app; a folder that cannot be served fails here, once
        Index.open(index)
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connections wait from the moment the address is printed
    port = sock.getsockname()[1]
    click.echo(f"serving {index} at http://{host}:{port}/ (API docs: http://{host}:{port}/docs)"
               + (f" with {workers} worker processes" if workers > 1 else ""))
    sys.stdout.flush()
    if workers == 1:
        uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    os.environ[SERVE_ENV] = json.dumps({"index": str(index), **options})
    config = uvicorn.Config("lookalike.server.app:app_from_environment", factory=True,
                            workers=workers, log_level="warning")
    Multiprocess(config, sockets=[sock]).run()
