"""The feature server as a plain ASGI application (run by uvicorn; see ``runner``).

No web framework: a request is a route lookup in a dict, the body read within its size limit,
one msgspec JSON decode, the lookup, one encode. Lookups block on Redis: by default they run in
a small thread pool (``ServeConfig.lookup_in``), which keeps the event loop free to accept and
parse other requests while one waits on Redis.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from featurepipe.online.served_log import ServedLog
from featurepipe.serve import feast, native
from featurepipe.serve.config import ServeConfig
from featurepipe.serve.errors import Problem, ServeError, problem
from featurepipe.serve.metrics import CONTENT_TYPE, ServeMetrics
from featurepipe.serve.openapi import docs_page, openapi
from featurepipe.serve.readiness import readiness
from featurepipe.serve.service import Lookup, LookupService

log = logging.getLogger("featurepipe.serve")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Answer = tuple[int, bytes, bytes]  # status, body, content type
Handler = Callable[[Scope, Receive], Awaitable[Answer]]

JSON = b"application/json"
_decode = msgspec.json.decode
_encode = msgspec.json.encode


class FeatureServer:
    """The ASGI application: routes, auth, limits, errors, metrics, served-feature log."""

    def __init__(self, config: ServeConfig, service: LookupService | None = None) -> None:
        self.config = config
        self.service = service or LookupService(config)
        self.metrics = ServeMetrics()
        self.served_log: ServedLog | None = None
        if config.log_dir and config.log_sample > 0:
            m = self.metrics
            self.served_log = ServedLog(
                config.log_dir,
                config.log_sample,
                self.service.dtypes,
                queue_size=config.log_queue,
                flush_rows=config.log_flush_rows,
                flush_seconds=config.log_flush_seconds,
                dropped=lambda why, n: m.log_dropped.labels(why).inc(n),
                written=m.log_rows.inc,
            )
        self.executor = (
            ThreadPoolExecutor(config.lookup_threads, thread_name_prefix="lookup")
            if config.lookup_in == "thread"
            else None
        )
        self._key = config.api_key.encode() if config.api_key else None
        self.routes: dict[str, dict[str, Handler]] = {
            "/features": {"POST": self.features},
            "/get-online-features": {"POST": self.get_online_features},
            "/health": {"GET": self.health},
            "/ready": {"GET": self.ready},
            "/metrics": {"GET": self.exposition},
            "/openapi.json": {"GET": self.openapi},
            "/docs": {"GET": self.docs},
        }
        self._openapi = _encode(openapi())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- plumbing ------------------------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # uvicorn calls this after the requests in flight were answered
                self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def close(self) -> None:
        """Write the queued served-feature log, stop the threads."""
        if self.served_log is not None:
            self.served_log.close()
        if self.executor is not None:
            self.executor.shutdown(wait=True)
        self.metrics.close()

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        path = scope["path"]
        methods = self.routes.get(path)
        endpoint = path if methods is not None else "other"
        m = self.metrics
        m.in_flight.inc()
        try:
            if methods is None:
                raise ServeError(404, "not_found", f"no endpoint {path} (see /docs)")
            handler = methods.get(scope["method"])
            if handler is None:
                raise ServeError(
                    405, "method_not_allowed", f"{path} takes {', '.join(methods)} requests"
                )
            status, body, ctype = await handler(scope, receive)
        except Exception as e:
            p = problem(e)
            if p is None:
                log.exception("%s %s failed", scope["method"], path)
                p = Problem(500, "internal", f"internal error ({type(e).__name__}); see the log")
            m.errors.labels(endpoint, p.code).inc()
            status, ctype = p.status, JSON
            body = _encode({"error": {"code": p.code, "message": p.message, "status": p.status}})
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b'Bearer realm="featurepipe"'))
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            m.in_flight.dec()
            m.requests.labels(endpoint, str(status)).inc()
            m.latency.labels(endpoint).observe(time.perf_counter() - start)

    def _authorize(self, scope: Scope) -> None:
        if self._key is None:
            return
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
            else:
                continue
            if hmac.compare_digest(given, self._key):
                return
            raise ServeError(401, "unauthorized", "the API key or bearer token is not valid")
        raise ServeError(
            401,
            "unauthorized",
            "this server needs an API key: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>'",
        )

    async def _body(self, scope: Scope, receive: Receive) -> Any:
        """The request's JSON body, within the size limit."""
        limit = self.config.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                raise ServeError(
                    413, "body_too_large", f"the body is {int(value):,} bytes; at most {limit:,}"
                )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ServeError(400, "bad_request", "the client went away before the body came")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ServeError(413, "body_too_large", f"the body exceeds {limit:,} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not raw.strip():
            raise ServeError(400, "malformed_json", "the body is empty: send a JSON object")
        try:
            return _decode(raw)
        except msgspec.DecodeError as e:
            raise ServeError(400, "malformed_json", f"the body is not valid JSON: {e}") from None

    async def _run(self, work: Callable[[], Answer]) -> Answer:
        if self.executor is None:
            return work()
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def _request_id(self, scope: Scope) -> str | None:
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                return str(value.decode("latin-1"))[:200]
        return None

    def _served(self, scope: Scope, endpoint: str, got: Lookup) -> None:
        self.metrics.entity_rows.labels(endpoint).inc(len(got.rows))
        if self.served_log is not None:
            self.served_log.offer(endpoint, self._request_id(scope), got)

    # -- endpoints -----------------------------------------------------------------------------
    async def features(self, scope: Scope, receive: Receive) -> Answer:
        self._authorize(scope)
        body = await self._body(scope, receive)

        def work() -> Answer:
            wanted, kwargs = native.parse(self.service, body)
            got = self.service.lookup(wanted, **kwargs)
            self._served(scope, "/features", got)
            return 200, _encode(native.response(self.service, got)), JSON

        return await self._run(work)

    async def get_online_features(self, scope: Scope, receive: Receive) -> Answer:
        self._authorize(scope)
        body = await self._body(scope, receive)

        def work() -> Answer:
            wanted, kwargs, full = feast.parse(self.service, body)
            got = self.service.lookup(wanted, **kwargs)
            self._served(scope, "/get-online-features", got)
            return 200, _encode(feast.response(self.service, got, full)), JSON

        return await self._run(work)

    async def health(self, scope: Scope, receive: Receive) -> Answer:
        return 200, b'{"status":"ok"}', JSON

    async def ready(self, scope: Scope, receive: Receive) -> Answer:
        loop = asyncio.get_running_loop()
        ok, details = await loop.run_in_executor(self.executor, readiness, self.service)
        return (200 if ok else 503), _encode(details), JSON

    async def exposition(self, scope: Scope, receive: Receive) -> Answer:
        return 200, self.metrics.exposition(), CONTENT_TYPE.encode()

    async def openapi(self, scope: Scope, receive: Receive) -> Answer:
        return 200, self._openapi, JSON

    async def docs(self, scope: Scope, receive: Receive) -> Answer:
        return 200, docs_page().encode(), b"text/html; charset=utf-8"


def create_app() -> FeatureServer:
    """The application of a worker process, configured from the environment (``runner``)."""
    return FeatureServer(ServeConfig.from_env())
