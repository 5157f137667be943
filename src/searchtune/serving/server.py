"""KServe's model server with the limits a public endpoint needs, and readiness tied to the model.

KServe's ``ModelServer`` runs FastAPI on uvicorn with no body limit, no header or body
timeouts and no connection cap, and answers ``/v2/health/ready`` with true as soon as it
listens. This module starts the same REST server (same routes, v1 and v2, ``/metrics``)
with:

* **body limit** (``BodyGuard``, an ASGI wrapper around the whole app): a declared
  ``Content-Length`` over the limit gets 413 before a byte is read; a chunked body is
  counted while read and cut off with 413 at the limit. The connection is then closed.
* **body read timeout**: the whole body must arrive within ``body_timeout`` seconds, else
  408 and close (a ``Content-Length`` larger than what is sent no longer holds anything).
* **header timeout and size** (``_GuardedHttpTools``, uvicorn's httptools protocol with a
  timer): request line and headers must be complete within ``header_timeout`` seconds
  (408 and close) and within ``max_header_bytes`` (431 and close).
* **connections**: at most ``max_connections`` open at once (uvicorn's
  ``limit_concurrency``; beyond it 503). Model work has its own bound (``Batcher``).
* **readiness**: ``/v2/health/ready`` and ``/v1/models/<name>`` say not ready until the
  model and index are loaded (in a thread, after the port is open, so liveness probes
  pass while a large index loads); a failed load stops the server with the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
import threading

from prometheus_client import Counter

log = logging.getLogger(__name__)

REFUSED_HTTP = Counter("searchtune_http_refused", "Requests refused by the HTTP limits", ["status"])


@dataclasses.dataclass(frozen=True)
class HttpLimits:
    """Limits of the HTTP layer (see the module docstring)."""

    max_body_bytes: int = 1 << 20
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    max_header_bytes: int = 64 << 10
    max_connections: int = 256
    keep_alive_timeout: int = 65


def _json_error(status: int, message: str) -> tuple[dict, dict]:
    import orjson

    body = orjson.dumps({"error": message})
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         (b"connection", b"close")]}
    return start, {"type": "http.response.body", "body": body, "more_body": False}


class BodyGuard:
    """ASGI wrapper: read the request body within a size limit and a deadline, then pass it on.

    Args:
        app: the ASGI application (KServe's FastAPI app).
        limits: ``max_body_bytes`` and ``body_timeout`` are used.
    """

    def __init__(self, app, limits: HttpLimits):
        self.app, self.limits = app, limits

    async def _refuse(self, send, status: int, message: str) -> None:
        REFUSED_HTTP.labels(str(status)).inc()
        start, body = _json_error(status, message)
        await send(start)
        await send(body)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limits.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            status = 413 if declared.isdigit() else 400
            return await self._refuse(send, status, f"request body of {declared.decode(errors='replace')} bytes "
                                                    f"exceeds the limit of {limit} bytes" if status == 413
                                      else "Content-Length is not a number")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return await self._refuse(send, 408, f"request body not complete within {self.limits.body_timeout:g} s")
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > limit:
                return await self._refuse(send, 413, f"request body exceeds the limit of {limit} bytes")
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for a disconnect, as the server would

        return await self.app(scope, replay, send)


def _guarded_protocol(limits: HttpLimits):
    """uvicorn's httptools protocol with a header deadline and a header size cap."""
    import httptools
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

    class _GuardedHttpTools(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_bytes, self._refusal, self._header_timer = 0, None, None
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(limits.header_timeout, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _count(self, size: int) -> None:
            self._header_bytes += size
            if self._header_bytes > limits.max_header_bytes:
                self._refusal = (431, f"request line and headers exceed {limits.max_header_bytes} bytes")
                raise httptools.HttpParserError(self._refusal[1])  # stops the parser; data_received answers

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value))
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            self._refusal = (408, f"request headers not complete within {limits.header_timeout:g} s")
            if not self.transport.is_closing():
                self.send_400_response(self._refusal[1])

        def send_400_response(self, msg: str) -> None:
            status, msg = self._refusal or (400, msg)
            REFUSED_HTTP.labels(str(status)).inc()
            body = msg.encode("utf-8")
            self.transport.write(b"".join([STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
                                           b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body), body]))
            self.transport.close()

    return _GuardedHttpTools


@contextlib.contextmanager
def _argv_hidden():
    """kserve.model_server parses sys.argv when imported; searchtune's own flags are not for it."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


class NotReadyYet(logging.Filter):
    """Drop KServe's traceback for each readiness probe answered 503 while the model loads.

    Kubernetes probes every few seconds, so a one-minute load would log dozens of identical
    tracebacks; the 503 itself is still in the access log, and the loading is one line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        from kserve.errors import ModelNotReady, ServerNotReady

        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (ServerNotReady, ModelNotReady))


def serve(service, model_name: str, host: str, port: int, limits: HttpLimits) -> None:
    """Listen on ``host:port``, load the service in a thread, serve until SIGINT/SIGTERM.

    Args:
        service: a ``RelevanceService`` not loaded yet.
        model_name: ``<name>`` of the URLs; search is ``<name>-search``.
        host: address to listen on.
        port: TCP port.
        limits: the HTTP limits.

    Raises:
        SearchtuneError (or the load's exception): the model or index could not be loaded.
    """
    with _argv_hidden():
        from kserve import model_server
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.rest.server import RESTServer

    from searchtune.serving.batcher import Overloaded
    from searchtune.serving.models import RelevanceModel, SearchModel
    from searchtune.serving.protocol import BadRequest

    class ReadyWhenModelsAre(DataPlane):
        async def ready(self) -> bool:
            models = self.model_registry.get_models().values()
            return bool(models) and all([await m.healthy() for m in models])

    server = model_server.ModelServer(http_port=port, enable_grpc=False, workers=1, enable_latency_logging=False,
                                      timeout_keep_alive=limits.keep_alive_timeout)
    server.dataplane = ReadyWhenModelsAre(model_registry=server.registered_models)
    for model in (RelevanceModel(model_name, service), SearchModel(f"{model_name}-search", service)):
        server.register_model(model)
    app = model_server.app
    app.add_exception_handler(BadRequest, lambda _, exc: JSONResponse({"error": str(exc)}, status_code=400))
    app.add_exception_handler(Overloaded, lambda _, exc: JSONResponse(
        {"error": f"overloaded: {exc}; retry shortly"}, status_code=503, headers={"Retry-After": "1"}))
    app.add_exception_handler(RequestValidationError, lambda _, exc: JSONResponse(
        {"error": "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])}, status_code=400))
    rest = RESTServer(model_server.FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port,
                      workers=1, timeout_keep_alive=limits.keep_alive_timeout)
    rest.config.host = host
    rest.config.app = BodyGuard(app, limits)
    rest.config.http = _guarded_protocol(limits)
    rest.config.limit_concurrency = limits.max_connections
    failure: list[BaseException] = []
    logging.getLogger("kserve").addFilter(NotReadyYet())
    log.info("loading the model and index; /v2/health/ready answers 503 until they are loaded")

    def load() -> None:
        try:
            service.load()
        except BaseException as error:  # noqa: BLE001 - reported by serve() after the server stops
            failure.append(error)
            rest._server.should_exit = True  # uvicorn's own stop flag; RESTServer offers no public stop

    async def run() -> None:
        asyncio.get_running_loop().call_soon(threading.Thread(target=load, name="searchtune-load", daemon=True).start)
        await rest.start()

    try:
        asyncio.run(run())
    finally:
        service.close()
    if failure:
        raise failure[0]
