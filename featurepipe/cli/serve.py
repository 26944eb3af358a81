"""``featurepipe serve``: the HTTP/JSON feature server."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from featurepipe.cli.app import app
from featurepipe.cli.common import DefsOpt, PrefixOpt, RedisUrlOpt, RepoOpt, console, project_for
from featurepipe.errors import FeaturepipeError


@app.command()
def serve(
    repo: RepoOpt = None,
    defs: DefsOpt = None,
    redis_url: RedisUrlOpt = None,
    prefix: PrefixOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (Feast's default).")] = 6566,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    view: Annotated[
        list[str] | None, typer.Option(help="Serve only these views (default: every view).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            "--token",
            help="Require 'X-API-Key: KEY' or 'Authorization: Bearer KEY' on lookups "
            "(else $FEATUREPIPE_API_KEY; prefer the variable: options show in process lists).",
        ),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body.")] = 1 << 20,
    max_entities: Annotated[int, typer.Option(help="Most entity rows per request.")] = 1000,
    log_sample: Annotated[
        float, typer.Option(help="Share of lookups written to the served-feature log, 0-1.")
    ] = 0.0,
    log_dir: Annotated[
        str | None, typer.Option(help="Directory of the served-feature log's Parquet files.")
    ] = None,
    log_flush_seconds: Annotated[
        float, typer.Option(help="Write a served-feature log file at least this often.")
    ] = 30.0,
    graceful_seconds: Annotated[
        float, typer.Option(help="On SIGTERM, wait this long for requests in flight.")
    ] = 30.0,
    lookup_in: Annotated[
        str,
        typer.Option(
            help="Where lookups run: thread (a small pool; the event loop stays free) or loop."
        ),
    ] = "thread",
) -> None:
    """Serve online features over HTTP/JSON: POST /features, POST /get-online-features
    (Feast-compatible), GET /health, /ready, /metrics, /openapi.json, /docs."""
    from featurepipe.serve.config import API_KEY_ENV, ServeConfig
    from featurepipe.serve.runner import check, run

    if workers < 1:
        raise FeaturepipeError(f"--workers {workers}: at least 1")
    if not 0.0 <= log_sample <= 1.0:
        raise FeaturepipeError(f"--log-sample {log_sample}: a share between 0 and 1")
    if log_sample > 0 and not log_dir:
        raise FeaturepipeError("--log-sample needs --log-dir (where the Parquet files go)")
    if lookup_in not in ("thread", "loop"):
        raise FeaturepipeError(f"--lookup-in {lookup_in!r}: thread or loop")
    project = project_for(repo, defs)
    config = ServeConfig(
        repo=str(project.root),
        definitions=str(project.definitions),
        redis_url=redis_url,
        prefix=prefix,
        views=tuple(view or ()),
        api_key=api_key or os.environ.get(API_KEY_ENV) or None,
        max_body_bytes=max_body_bytes,
        max_entities=max_entities,
        log_sample=log_sample,
        log_dir=str(project.path(log_dir)) if log_dir else None,
        log_flush_seconds=log_flush_seconds,
        lookup_in=lookup_in,
    )
    served = check(config)
    auth = "API key required" if config.api_key else "no auth"
    console.print(
        f"serving {', '.join(served)} on http://{host}:{port} ({workers} worker(s), {auth})"
    )
    run(config, host=host, port=port, workers=workers, graceful_seconds=graceful_seconds)
