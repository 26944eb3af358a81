"""Running the server: uvicorn with uvloop and httptools, one or several worker processes.

Worker processes are started afresh and read their configuration from the environment
(``CONFIG_ENV``). SIGTERM or SIGINT stops accepting connections, lets the requests in flight be
answered (within ``graceful_seconds``), writes the served-feature log and exits; with several
workers, uvicorn's supervisor forwards the signal to each.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

from featurepipe.serve.config import CONFIG_ENV, ServeConfig
from featurepipe.serve.metrics import MULTIPROC_ENV


def check(config: ServeConfig) -> list[str]:
    """Load the definitions as a worker will (a bad project fails here, once, in one line);
    the names of the views served."""
    from featurepipe.serve.service import LookupService

    return list(LookupService(config).views)


def run(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 6566,
    workers: int = 1,
    graceful_seconds: float = 30.0,
    log_level: str = "info",
) -> None:
    """Serve until SIGTERM or SIGINT."""
    import uvicorn

    os.environ[CONFIG_ENV] = config.to_env()
    made = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        made = tempfile.mkdtemp(prefix="featurepipe-metrics-")
        os.environ[MULTIPROC_ENV] = made
    try:
        uvicorn.run(
            "featurepipe.serve.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
            http="httptools" if importlib.util.find_spec("httptools") else "h11",
            lifespan="on",
            access_log=False,  # a log line per request costs more than the lookup
            server_header=False,
            timeout_graceful_shutdown=int(graceful_seconds),
            # longer than load balancers' idle timeouts (60 s on the common ones): a balancer
            # must close an idle connection first, or its next request meets a closed socket
            timeout_keep_alive=75,
            log_level=log_level,
        )
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
