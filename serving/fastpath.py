"""/predict, /predict_batch, /explain and /explain_batch, answered by a raw ASGI handler in front of
BentoML's middlewares.

BentoML's own API route and middleware chain cost more per request than the prediction itself
(see bentoml_internals.py). PredictionRoutes is added with add_asgi_middleware and, when the app
starts, puts its handler in front of that chain for the two prediction routes. The handler counts
and times each request in BentoML's own request metrics, reads the body with a size limit
(body.py), answers within the request timeout (deadlines.py), validates it with pydantic-core,
sends single records through BentoML's adaptive batching and batches to a pool of their own
(batch_pool.py), and writes the JSON with orjson. /explain and /explain_batch take the same
records (same contract) and run in a pool of their own (serving/explain.py). The docs page (/, its files, /docs.json) is served
from memory (docs_page.py). Every other route goes through BentoML as usual, and its router's
plain-text 404 and 405 become JSON errors like ours.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any, Awaitable, Callable

import numpy as np
import orjson
from bentoml.exceptions import ServiceUnavailable
from starlette.middleware.cors import CORSMiddleware

from . import bentoml_internals, docs_page, metrics, openapi, request_ids
from .bentoml_internals import ASGIApp
from .batch_pool import BatchPool
from .body import BodyTooLarge, read_body
from .contract import Contract, InputError
from .deadlines import Deadlines, timed_out
from .explain import MAX_EXPLAIN_RECORDS, NICENESS, ExplainBatcher
from .settings import Settings

logger = logging.getLogger("xgb_service")

BATCHED_API = "predict_rows"  # the batchable BentoML API the single-record path feeds
EXPLAIN_ROUTES = frozenset({"/explain", "/explain_batch"})
RETRY_AFTER_SECONDS = b"1"
_API_KEY_CHALLENGE = (b"www-authenticate", b"API-Key")  # with every 401
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_SECURITY_HEADERS = [_NOSNIFF, (b"cache-control", b"no-store")]


class PredictionRoutes:
    def __init__(self, app: ASGIApp, settings: Settings, contract: Contract, card: dict[str, Any], client_schema: dict[str, Any]) -> None:
        self.app = app
        self.settings = settings
        self.contract = contract
        self.api_key = settings.api_key.encode()
        self.routes: dict[str, tuple[Callable[[bytes, dict[str, Any], Any], Awaitable[bytes]], int]] = {
            "/predict": (self.predict, settings.max_predict_bytes),
            "/predict_batch": (self.predict_batch, settings.max_batch_bytes),
            "/explain": (self.explain, settings.max_predict_bytes),
            "/explain_batch": (self.explain_batch, settings.max_batch_bytes),
        }
        versions = [model["version"] for model in card["rollout"]["models"]]
        self.pages = docs_page.pages(openapi.build(contract, settings, versions))  # /, its files, /docs.json
        # The model card (serving/model_card.py); BentoML's clients read the routes from /schema.json (serving/client_api.py).
        # With XGB_API_KEY set the card needs the key, like the prediction routes: it names the training
        # data, its metrics and the library versions. The docs page and the contract stay readable.
        self.pages["/metadata"] = docs_page.Page(b"application/json", orjson.dumps(card), keyed=True)
        self.pages["/schema.json"] = docs_page.Page(b"application/json", orjson.dumps(client_schema))
        self.explain_pool = BatchPool(settings.explain_threads, settings.explain_queue, name="explain", unit="records to explain", niceness=NICENESS)
        # What serves the prediction routes from in front of BentoML's chain (see __call__).
        self.front: ASGIApp = CORSMiddleware(self.handle, **cors_options(settings)) if settings.cors_origins else self.handle
        self.traffic = bentoml_internals.TrafficMetrics(None)
        self.not_ready: bytes | None = None  # the failed start-up check's answer to /readyz and /predict*
        self.inflight = 0
        self.deadlines = Deadlines(settings.request_timeout_s)
        self.batch_pool = BatchPool(settings.batch_threads, settings.batch_queue)
        self._batched: Callable[[np.ndarray], Awaitable[np.ndarray]] | None = None
        self._service: Any = None
        self.capture: Any = None  # the service's serving.capture.Capture when XGB_CAPTURE is on
        # One per loaded model, keyed by version (they share the pool); need the service's explainers: made in start().
        self.explanations: dict[str, ExplainBatcher] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, self.on_startup_complete(scope["app"], send))
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.not_ready is not None and (scope["path"] in self.routes or scope["path"] == "/readyz"):
            return await respond(send, 503, self.not_ready, [(b"retry-after", RETRY_AFTER_SECONDS)])
        if scope["path"] in self.routes:  # (once started, these requests go to self.front directly)
            return await self.front(scope, receive, send)
        page = self.pages.get(scope["path"])
        if page is not None:
            if scope["method"] != "GET":
                return await respond(send, 405, not_allowed(scope).body(), [(b"allow", b"GET")])
            request_headers = dict(scope["headers"])
            if page.keyed:
                try:
                    self.check_api_key(request_headers)
                except InputError as exc:
                    return await respond(send, exc.status, exc.body(), [_API_KEY_CHALLENGE])
            body, headers = page.answer(request_headers.get(b"accept-encoding", b""))
            return await respond(send, 200, body, headers, page.content_type, page.cache_control)
        if scope["path"] == f"/{BATCHED_API}":
            # Internal: reachable only through /predict, which validates what it sends.
            return await respond(send, 404, not_found(scope).body())
        return await self.app(scope, receive, bentoml_route_sender(scope, send))

    async def handle(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        """One /predict or /predict_batch request, counted in BentoML's request metrics."""
        endpoint = scope["path"]
        started = self.traffic.started(endpoint)
        status = 500
        try:
            status = await self.answer_request(scope, receive, send)
        finally:
            self.traffic.finished(endpoint, status, started)

    async def answer_request(self, scope: dict[str, Any], receive: Callable, send: Callable) -> int:
        handler, max_bytes = self.routes[scope["path"]]
        status, headers, body = 200, None, None
        counted = scope["path"] not in EXPLAIN_ROUTES  # explanations have their own limit (their pool)
        self.inflight += counted
        task = asyncio.current_task()
        cohort = self.deadlines.start(task)
        request_ids.assign(scope)
        try:
            pinned = self.check_request(scope)
            body = await read_body(receive, max_bytes, scope)
            if self.inflight > self.settings.max_inflight:
                raise ServiceUnavailable("the prediction queue is full")
            payload = await handler(body, scope, pinned)
        except InputError as exc:
            metrics.rejected.labels(reason=_reason(exc.status)).inc()
            status, payload = exc.status, exc.body()
            headers = [_API_KEY_CHALLENGE] if exc.status == 401 else []
            if exc.status == 405:
                headers.append((b"allow", b"POST"))
            if isinstance(exc, BodyTooLarge) and exc.close_connection:
                headers.append((b"connection", b"close"))
        except (asyncio.CancelledError, ServiceUnavailable) as exc:
            # BentoML's dispatcher turns a cancelled wait into ServiceUnavailable: either may be the deadline.
            if timed_out(cohort, task):
                status, payload = self.timeout_answer(body is None)
            elif isinstance(exc, asyncio.CancelledError):
                raise
            else:
                metrics.rejected.labels(reason="overloaded").inc()
                status, headers = 503, [(b"retry-after", RETRY_AFTER_SECONDS)]
                payload = orjson.dumps({"error": "overloaded: the prediction queue is full, retry shortly", "detail": []})
        except Exception:
            logger.exception("prediction failed")
            status = 500
            payload = orjson.dumps({"error": "internal error: the prediction failed; see the server log", "detail": []})
        finally:
            self.inflight -= counted
            cohort.discard(task)
        await respond(send, status, payload, request_ids.with_header(scope, headers))
        return status

    def timeout_answer(self, reading_body: bool) -> tuple[int, bytes]:
        """408 for a client still trickling its body at the deadline, 504 for a prediction not done by then."""
        metrics.rejected.labels(reason="timeout").inc()
        timeout = self.settings.request_timeout_s
        if reading_body:
            return 408, InputError(408, f"request body not received within {timeout:g} s").body()
        return 504, InputError(504, f"the prediction did not finish within {timeout:g} s (XGB_REQUEST_TIMEOUT_S)").body()

    def on_startup_complete(self, app: Any, send: Callable) -> Callable:
        """The lifespan's send: when BentoML's start-up is done (service instance, dispatchers), and
        before uvicorn accepts a request, look up and check the BentoML internals the fast path uses."""

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                self.start(app)
            await send(message)

        return wrapped

    def start(self, app: Any) -> None:
        """Bind to BentoML's dispatcher and service instance, then take the prediction routes in front
        of its middleware chain. If BentoML does not look as expected (an upgrade), the worker stays
        up but not ready: /readyz and the prediction routes answer 503 naming the failed check, so a
        deployment never takes traffic it would answer with 500s."""
        try:
            factory = bentoml_internals.find_app_factory(app, BATCHED_API)
            self._batched = bentoml_internals.batch_caller(factory, BATCHED_API)
            self._service = bentoml_internals.service_instance(factory)
            self.capture = getattr(self._service, "capture", None)
            bentoml_internals.bind_api_once(self._service, BATCHED_API)
            bentoml_internals.dispatch_without_holding(factory, BATCHED_API)
            self.explanations = {version: ExplainBatcher(e, self.explain_pool) for version, e in self._service.explainers.items()}
            self.traffic = bentoml_internals.TrafficMetrics(bentoml_internals.traffic_metrics_middleware(app))
            bentoml_internals.serve_in_front(app, frozenset(self.routes), self.front)
        except Exception as exc:  # BentoMLInternalsChanged names the check; anything else is a change too
            error = f"not ready: BentoML internals changed ({exc}); update serving/bentoml_internals.py"
            logger.error("%s", error, exc_info=not isinstance(exc, bentoml_internals.BentoMLInternalsChanged))
            self.not_ready = InputError(503, error).body()

    def check_request(self, scope: dict[str, Any]) -> Any:
        """Refuse what is not a well-formed prediction request; returns the model X-Model-Version pins, if any."""
        if scope["method"] != "POST":
            raise not_allowed(scope, "POST")
        headers = dict(scope["headers"])
        self.check_api_key(headers)
        content_type = headers.get(b"content-type")
        if content_type is not None and content_type.split(b";")[0].strip().lower() != b"application/json":
            raise InputError(415, f"unsupported content type {content_type.decode('latin-1')[:100]!r}: send application/json")
        pinned = headers.get(b"x-model-version")
        return None if pinned is None else self._service.rollout.pinned(pinned)

    def check_api_key(self, headers: dict[bytes, bytes]) -> None:
        if self.api_key and not hmac.compare_digest(headers.get(b"x-api-key", b""), self.api_key):
            raise InputError(401, "missing or wrong API key: send it in the X-API-Key header")

    async def predict(self, body: bytes, scope: dict[str, Any], pinned: Any) -> bytes:
        rows = self.contract.parse_record(body)
        self.check_ranges(rows, batch=False)
        if pinned is not None:  # debugging traffic: straight to the pinned model, not batched with the rest
            answer = orjson.dumps(self._service.answers(rows, pinned)[0])
        else:
            assert self._batched is not None
            (answer,) = await self._batched(rows)
        if self.capture is not None:
            self.capture.record(request_ids.of(scope), rows, answer, batch=False)
        return answer

    async def predict_batch(self, body: bytes, scope: dict[str, Any], pinned: Any) -> bytes:
        self.batch_pool.admit()
        rows = self.contract.parse_batch(body)
        self.check_ranges(rows, batch=True)
        model = self._service.rollout.for_request(pinned)  # a canary answers whole requests
        # Already a batch: straight to the model, off the event loop, on this route's own threads.
        answers = request_ids.label_records(request_ids.of(scope), await self.batch_pool.run(self._service.answers, rows, model))
        if self.capture is not None:
            self.capture.record(request_ids.of(scope), rows, answers, batch=True)
        return orjson.dumps({"predictions": answers})

    def explanations_for(self, pinned: Any) -> ExplainBatcher:
        """The loaded model's explanations that answer this request: pinned, or the canary's draw."""
        assert self.explanations is not None
        return self.explanations[self._service.rollout.for_request(pinned).version]

    async def explain(self, body: bytes, scope: dict[str, Any], pinned: Any) -> bytes:
        explanations = self.explanations_for(pinned)
        explained_class, top = explanations.explainer.options(scope["query_string"])
        rows = self.contract.parse_record(body)
        self.check_ranges(rows, batch=False)
        answers = await explanations.explain(rows, explained_class, top)
        if self.capture is not None:
            self.capture.record(request_ids.of(scope), rows, answers, batch=False)
        return orjson.dumps(answers[0])

    async def explain_batch(self, body: bytes, scope: dict[str, Any], pinned: Any) -> bytes:
        explanations = self.explanations_for(pinned)
        explained_class, top = explanations.explainer.options(scope["query_string"])
        rows = self.contract.parse_batch(body)
        if len(rows) > MAX_EXPLAIN_RECORDS:
            raise InputError(422, f"too many instances: {len(rows)} records in one /explain_batch, at most {MAX_EXPLAIN_RECORDS}",
                             [{"loc": ["instances"], "msg": f"at most {MAX_EXPLAIN_RECORDS} records", "type": "too_long"}])  # fmt: skip
        self.check_ranges(rows, batch=True)
        answers = request_ids.label_records(request_ids.of(scope), await explanations.explain(rows, explained_class, top))
        if self.capture is not None:
            self.capture.record(request_ids.of(scope), rows, answers, batch=True)
        return orjson.dumps({"explanations": answers})

    def check_ranges(self, rows: np.ndarray, batch: bool) -> None:
        """Refuse out-of-range values when so configured; counting them in "warn" mode is done per
        batch, where the rows are predicted (XGBoostService.answers)."""
        if self.settings.range_check != "reject":
            return
        mask = self.contract.out_of_range(rows)
        metrics.observe_out_of_range(mask, self.contract.schema.feature_names)  # also counts the records checked: the ratio's denominator
        if mask.any():
            raise self.contract.range_error(rows, mask, batch)


def _reason(status: int) -> str:
    return {401: "unauthorized", 413: "too_large"}.get(status, "invalid_input")


def cors_options(settings: Settings) -> dict[str, Any]:
    return {"allow_origins": list(settings.cors_origins), "allow_methods": ["GET", "POST"],
            "allow_headers": ["Content-Type", "X-API-Key", request_ids.HEADER], "expose_headers": [request_ids.HEADER]}


def not_found(scope: dict[str, Any]) -> InputError:
    return InputError(404, f"not found: {scope['path'][:200]}")


def not_allowed(scope: dict[str, Any], allowed: str = "GET") -> InputError:
    return InputError(405, f"method {scope['method']} not allowed on {scope['path'][:200]}: use {allowed}")


def bentoml_route_sender(scope: dict[str, Any], send: Callable) -> Callable:
    """BentoML's own routes (probes, metrics) get the same security headers as ours, and its router's
    plain-text "Not Found" and "Method Not Allowed" become our JSON errors, like every other error."""
    replaced = False

    async def wrapped(message: dict[str, Any]) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start":
            headers = dict(message.get("headers", ()))
            if message["status"] in (404, 405) and not headers.get(b"content-type", b"").startswith(b"application/json"):
                replaced = True
                if message["status"] == 404:
                    return await respond(send, 404, not_found(scope).body())
                allowed = headers.get(b"allow", b"GET")
                return await respond(send, 405, not_allowed(scope, allowed.decode("latin-1")).body(), [(b"allow", allowed)])
            message["headers"] = [*message.get("headers", ()), *_SECURITY_HEADERS]
        elif replaced:
            return  # the body of the response replaced above
        await send(message)

    return wrapped


async def respond(send: Callable, status: int, body: bytes, extra_headers: list[tuple[bytes, bytes]] | None = None,
                  content_type: bytes = b"application/json", cache_control: bytes = b"no-store") -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()), _NOSNIFF, (b"cache-control", cache_control)]
    if extra_headers:
        headers.extend(extra_headers)
    start = {"type": "http.response.start", "status": status, "headers": headers}
    await bentoml_internals.send_response(send, start, {"type": "http.response.body", "body": body})
