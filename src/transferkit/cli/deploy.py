"""Deployment commands: ``export`` (ONNX, int8) and ``serve`` (HTTP)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from transferkit.cli.app import Json, app, emit_json, err, existing, names, out
from transferkit.deploy.serve_pool import (
    MAX_CONNECTIONS,
    MAX_HEADER_TIMEOUT_S,
    MAX_PIXELS,
    MAX_QUEUE,
    MAX_TIMEOUT_S,
    MAX_WORKERS,
    MIN_PIXELS,
    ServeLimits,
)
from transferkit.errors import TransferkitError
from transferkit.extras import ensure, require

Opt = typer.Option


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by `fit` or `fit-multitask`.")],
    format_: Annotated[str, Opt("--format", help="Export format (onnx).")] = "onnx",
    out_file: Annotated[Path | None, Opt("--out", "-o", help="The .onnx file [default: RUN/model.onnx].")] = None,
    quantize: Annotated[
        str | None, Opt(help="Also write int8 models: dynamic, static or dynamic,static (static needs --calibrate).")
    ] = None,
    calibrate: Annotated[
        Path | None, Opt(help="Training data whose items (up to 300) calibrate --quantize static.")
    ] = None,
    data: Annotated[
        Path | None, Opt(help="Items to check the export on [default: the run's validation split].")
    ] = None,
    repeats: Annotated[int, Opt(help="Timed runs per latency figure (the median is shown).", min=1, max=10_000)] = 20,
    as_json: Json = False,
) -> None:
    """Export a run to ONNX (and int8), check it against PyTorch, report size, latency and accuracy."""
    if format_ != "onnx":
        raise TransferkitError(f"--format {format_!r} is invalid: onnx is the one export format")
    existing(run_dir, "run directory")
    from transferkit.deploy.export import export_onnx, rows_as_dicts

    rows = export_onnx(
        run_dir, out_file, quantize=names(quantize or ""), calibrate=calibrate, data=data, repeats=repeats,
        console=err if as_json else out,
    )  # fmt: skip
    if as_json:
        emit_json({"run_dir": str(run_dir), "formats": rows_as_dicts(rows)})
        return
    table = Table("format", "file", "size", "latency 1 item", "latency batch 32", "val accuracy", "top-1 agreement")
    for r in rows:
        accuracy = "" if r.accuracy is None else f"{r.accuracy:.4f}"
        agreement = "" if r.agreement is None else f"{r.agreement:.2%} (max |Δp| {r.max_delta:.2g})"
        table.add_row(
            r.format, Path(r.file).name if r.file else "(model.safetensors)", f"{r.bytes / 2**20:.1f} MiB",
            f"{r.latency_1_ms:.1f} ms", f"{r.latency_32_ms:.0f} ms", accuracy, agreement,
        )  # fmt: skip
    out.print(table)


@app.command()
def serve(
    model: Annotated[Path, typer.Argument(help="A run directory, or an .onnx file from `transferkit export`.")],
    host: Annotated[str, Opt(help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, Opt(help="TCP port.", min=1, max=65535)] = 8000,
    workers: Annotated[
        int, Opt(help="Predictions run at once, in threads sharing the model.", min=1, max=MAX_WORKERS)
    ] = 1,
    queue: Annotated[
        int, Opt(help="Requests running or waiting at most; past it 503 + Retry-After.", min=1, max=MAX_QUEUE)
    ] = 8,
    timeout: Annotated[
        float, Opt(help="Seconds a request may take, waiting included; past it 504.", min=0.1, max=MAX_TIMEOUT_S)
    ] = 60.0,
    body_timeout: Annotated[
        float,
        Opt(help="Seconds a body may take to arrive (at most --timeout); past it 408.", min=0.1, max=MAX_TIMEOUT_S),
    ] = 10.0,
    header_timeout: Annotated[
        float,
        Opt(
            help="Seconds to send a request head (from connecting, or the last answer), else closed.",
            min=0.1,
            max=MAX_HEADER_TIMEOUT_S,
        ),
    ] = 5.0,
    max_connections: Annotated[
        int, Opt(help="Connections open at once (under `ulimit -n`); more are closed.", min=1, max=MAX_CONNECTIONS)
    ] = 256,
    max_connections_per_client: Annotated[
        int | None,
        Opt(
            help="Connections one client address may hold [default: a quarter of --max-connections]; "
            "more are closed. Behind a reverse proxy, set it to --max-connections.",
            min=1,
            max=MAX_CONNECTIONS,
        ),
    ] = None,
    queue_per_client: Annotated[
        int | None,
        Opt(
            help="Places of --queue one client address may hold [default: half of --queue]; more are 429. "
            "Behind a reverse proxy, set it to --queue.",
            min=1,
            max=MAX_QUEUE,
        ),
    ] = None,
    max_pixels: Annotated[
        int,
        Opt(
            help="Pixels an uploaded image may declare (read from its header); more are 413.",
            min=MIN_PIXELS,
            max=MAX_PIXELS,
        ),
    ] = 50_000_000,
) -> None:
    """Serve predictions over HTTP: POST /predict, GET /health, GET /model, and a page at /."""
    existing(model, "run directory or .onnx file")
    limits = ServeLimits(
        workers, queue, timeout, body_timeout, header_timeout, max_connections, max_connections_per_client,
        queue_per_client, max_pixels,
    )  # before loading  # fmt: skip
    # the server's packages before the model loads (onnxruntime is checked by an .onnx file's own loading)
    ensure(("fastapi", "uvicorn", "python_multipart"), "transferkit serve")
    from transferkit.deploy.serve import create_app, load_predictor
    from transferkit.deploy.serve_http import descriptor_warning, listening_socket, server_config

    uvicorn = require("uvicorn", "transferkit serve")
    sock = listening_socket(host, port)  # a bad --host or a port in use: one line, before the model loads
    with contextlib.ExitStack() as held:  # a model refused: the port is not held by a server that never runs
        held.callback(sock.close)
        app_ = create_app(load_predictor(model), limits=limits)
        held.pop_all()
    warning = descriptor_warning(max_connections)
    if warning:
        err.print(warning, highlight=False, markup=False)
    out.print(f"serving {model} on http://{host}:{port}/ (Ctrl-C stops)", highlight=False, markup=False)
    server = uvicorn.Server(server_config(app_, host, port, limits))
    server.run(sockets=[sock])
    if not server.started:  # uvicorn has logged why (the port in use, say); uvicorn.run exits 3 here
        raise TransferkitError(f"serve could not start on {host}:{port}")
