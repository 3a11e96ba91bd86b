"""The XGBoost prediction service: the seed's API, served by BentoML, for the model in the store.

    POST /predict         one flat record  -> classification: {"predicted_class", "confidence", "model_version",
                          "features_used", "probabilities"} (+ "predicted_label" for named classes);
                          regression: {"prediction", "model_version", "features_used"}
    POST /predict_batch   {"instances": [...]} -> {"predictions": [...]}, same order
    GET  /metadata        the served model: tag, created, task, features, class names, metrics, provenance
    POST /explain         one record -> its prediction and exact TreeSHAP values (?class=, ?top=)
    POST /explain_batch   {"instances": [...]} (at most 1,000) -> {"explanations": [...]}, same order
    X-Model-Version       request header pinning one of the loaded models (serving/rollout.py)
    GET  /healthz /livez /readyz /metrics, / (docs page, serving/docs_page.py), /docs.json (OpenAPI)

The records' fields, types and ranges are the model's stored schema (model_store/schema.py), turned
into a Contract once at start-up. /predict and /predict_batch are answered by serving.fastpath
(validation, auth, size limits); single records reach the model through BentoML's adaptive
batching of `predict_rows`. /explain*
are answered there too, from their own bounded pool (serving/explain.py). Every predicted record is
counted into the model's drift bins (model_store/drift.py). With XGB_CANDIDATE_TAG a second model
of the same schema is loaded next to the primary (shadow or canary: serving/rollout.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import anyio.to_thread
import bentoml
import numpy as np
import orjson
from starlette.middleware.cors import CORSMiddleware

from model_store import ModelBundle, ModelContractError, drift, load_bundle, stored_model
from model_store import source as model_source
from model_store.bundle import encode
from serving import capture, client_api, metrics, pins, uvicorn_internals
from serving.contract import Contract, predicted
from serving.explain import MAX_EXPLAIN_RECORDS, Explainer, batch_explanations_type, explanation_type
from serving.fastpath import PredictionRoutes, cors_options
from serving.model_card import model_card
from serving.rollout import Rollout, Scored, load_candidate
from serving.settings import SettingsError, load

logger = logging.getLogger("xgb_service")
logger.setLevel(logging.INFO)  # BentoML's server logging keeps other loggers at WARNING: ours say what is served
PROCESS_SAMPLE_SECONDS = 5.0
DRIFT_FLUSH_SECONDS = 1.0
GC_THRESHOLDS = (10_000, 20, 20)

# Settings checked and the model resolved and fully loaded when the service is imported, so a bad
# XGB_* variable or a missing, corrupt or mismatched model stops `bentoml serve` (and `bentoml build`)
# with one line naming the variable or the tag and the fix, instead of workers failing one by one
# behind an open port.
try:
    model_source.import_configured_models()  # MODEL_URI, CANDIDATE_MODEL_URI: published models into the store
    SETTINGS = load()
    MODEL = stored_model()
    BUNDLE = load_bundle(str(MODEL.tag))
    CANDIDATE = load_candidate(BUNDLE, SETTINGS.candidate_tag)
    CAPTURE = capture.start(SETTINGS, BUNDLE, CANDIDATE, SETTINGS.candidate_mode)  # None when XGB_CAPTURE is off
except (SettingsError, ModelContractError, capture.CaptureError) as exc:  # BentoML's CLI prints its own errors as one line, not a traceback
    raise bentoml.exceptions.BentoMLException(str(exc)) from None
CONTRACT = Contract(BUNDLE.schema, SETTINGS)
RECORD = client_api.record_spec(CONTRACT)
if uvicorn_internals.in_bentoml_worker():  # before BentoML's worker builds uvicorn's config
    pins.warn_if_not_pinned()
    uvicorn_internals.bound_slow_headers(SETTINGS.header_timeout_s, SETTINGS.idle_timeout_s,
                                         metrics.rejected.labels(reason="header_timeout").inc)  # fmt: skip


@bentoml.service(
    workers=SETTINGS.workers or "cpu_count",
    threads=1,
    traffic={"timeout": SETTINGS.request_timeout_s},
    logging={"access": {"enabled": False}},
    metrics={"duration": {"buckets": list(metrics.REQUEST_DURATION_BUCKETS)}},
    tracing={"excluded_urls": ["/predict", "/predict_batch", "/explain", "/explain_batch", "/healthz", "/livez", "/readyz", "/metrics"]},
)
class XGBoostService:
    model_ref = MODEL  # what makes `bentoml build` pack the model into the Bento
    candidate_ref = bentoml.models.BentoModel(CANDIDATE.tag) if CANDIDATE else None

    def __init__(self) -> None:
        self.bundle = BUNDLE
        self.contract = CONTRACT
        self.rollout = Rollout(BUNDLE, CANDIDATE, SETTINGS.candidate_mode, SETTINGS.candidate_percent, self.score)
        self.capture = CAPTURE  # this worker's (each worker imports this module); None when off
        if self.rollout.shadow is not None:
            metrics.shadow_min_agreement.set(SETTINGS.shadow_min_agreement)
        prior = self.bundle.metadata.get("class_prior")
        if prior is None and BUNDLE.schema.is_classification:
            logger.warning("model %s has no class_prior metadata: class drift cannot be monitored; retrain with `make train`", self.bundle.tag)
        metrics.publish_model(self.bundle.tag, self.bundle.version, prior or [], self.bundle.class_names)
        if bentoml.server_context.worker_index == 1:  # once per server, not once per worker
            logger.info("serving model %s (task %s, %d features, created %s)", self.bundle.tag, self.bundle.schema.task,
                        self.bundle.schema.n_features, self.bundle.created)
        # /explain follows the rollout too: one explainer per loaded model.
        self.explainers = {m.version: Explainer(m, self.contract) for m in (BUNDLE, CANDIDATE) if m is not None}
        reference = self.bundle.metadata.get(drift.REFERENCE_KEY)
        self.drift: metrics.FeatureDrift | None = None
        if reference is None:
            logger.warning("model %s has no drift reference: feature drift cannot be monitored; retrain with `make train`", self.bundle.tag)
        else:
            metrics.publish_class_reference(reference["predicted_class_shares"])
            if SETTINGS.drift:
                self.drift = metrics.FeatureDrift(drift.Binner(reference, self.bundle.schema.feature_names))
            elif bentoml.server_context.worker_index == 1:
                logger.info("feature drift counting is off (XGB_DRIFT=0): no xgb_feature_bin_total, no feature PSI")

    @bentoml.on_startup
    def listen_on_own_socket(self) -> None:
        # With the arbiter's one shared socket, the worker that wakes first takes every pending
        # connection, and the busier worker sets p99 (docs/performance.md).
        if SETTINGS.reuse_port and uvicorn_internals.own_listening_socket():
            logger.info("listening on this worker's own SO_REUSEPORT socket")

    @bentoml.on_startup
    def freeze_startup_objects(self) -> None:
        # A worker starts with many long-lived objects (BentoML, pydantic, numpy, the model). A full
        # collection walks them all and stalls every request in flight: that was the p99
        # (docs/performance.md). Frozen objects are never scanned again; garbage made by requests still is.
        gc.collect()
        gc.freeze()
        # A request allocates thousands of objects, so the default 700-allocation threshold ran
        # several collections per request and the older generations often; these thresholds cut
        # p99 at 64 connections with the same worker memory (docs/performance.md).
        gc.set_threshold(*GC_THRESHOLDS)

    @bentoml.on_startup
    async def sample_process_metrics(self) -> None:
        # A worker replaced after a crash counts again (alert XGBWorkerRestarted).
        metrics.worker_starts.labels(worker_index=str(bentoml.server_context.worker_index)).inc()

        async def loop() -> None:
            while True:
                metrics.sample_process()
                await asyncio.sleep(PROCESS_SAMPLE_SECONDS)

        self._sampler = asyncio.get_running_loop().create_task(loop())

    @bentoml.on_startup
    async def flush_drift_counts(self) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(DRIFT_FLUSH_SECONDS)
                await anyio.to_thread.run_sync(self.drift.flush)  # numpy releases the GIL: requests go on

        if self.drift is not None:
            self._drift_flusher = asyncio.get_running_loop().create_task(loop())

    @bentoml.on_shutdown
    def flush_last_drift_counts(self) -> None:
        if self.drift is not None:
            self.drift.flush()

    @bentoml.on_startup
    def start_capture(self) -> None:
        if self.capture is not None:
            self.capture.start()

    @bentoml.on_shutdown
    def write_last_captured_records(self) -> None:
        if self.capture is not None:  # after the last request was answered: nothing answered is lost
            self.capture.close()

    @bentoml.on_startup
    def start_shadow_scoring(self) -> None:
        if self.rollout.shadow is not None:
            self.rollout.shadow.start()

    def scored(self, rows: np.ndarray, model: ModelBundle | None = None) -> Scored:
        """The encoded feature rows scored by `model` or the one the rollout picks, with their answer bodies."""
        if SETTINGS.range_check == "warn":  # ("reject" refused them before they got here)
            metrics.observe_out_of_range(self.contract.out_of_range(rows), self.bundle.schema.feature_names)
        if self.drift is not None:
            self.drift.observe(rows)
        return self.rollout.scored(rows, model)

    def prediction_bodies(self, rows: np.ndarray, model: ModelBundle | None = None) -> list[dict]:
        """The answer body for each encoded feature row (scored)."""
        return self.scored(rows, model).bodies

    def score(self, model: ModelBundle, rows: np.ndarray) -> Scored:
        """One model's outputs, predicted classes (None for regression) and answer bodies, counted in the prediction metrics."""
        if not model.schema.is_classification:
            values = model.predict(rows)
            metrics.observe_values(values)
            return Scored(values, None, self.contract.value_bodies(values, model.version))
        proba = model.predict_proba(rows)
        classes, confidence = predicted(proba)
        metrics.observe_predictions(classes, confidence, model.class_names)
        return Scored(proba, classes, self.contract.class_bodies(proba, classes, confidence, model.version))

    def explainer_for(self, pinned: ModelBundle | None = None) -> Explainer:
        """The explainer of the model answering a whole request: the one pinned, else the rollout's draw."""
        return self.explainers[self.rollout.for_request(pinned).version]

    # /predict, /predict_batch, /explain and /explain_batch are answered by serving.fastpath in front
    # of BentoML. These methods are how BentoML sees them: their specs make /schema.json, and with it
    # bentoml.SyncHTTPClient(url).predict(**record), .predict_batch(instances=[...]), .explain(...).
    # Called in process they pick the model as the fast path does (rollout.for_request, the same
    # prediction_bodies and explainers) with the defaults of a request without ?class= or ?top=.
    @bentoml.api(route="/predict", input_spec=RECORD, output_spec=CONTRACT.prediction_type)
    def predict(self, **fields: Any) -> dict:
        """Predict one record."""
        return self.prediction_bodies(self.record_rows(fields))[0]

    @bentoml.api(route="/predict_batch", input_spec=client_api.batch_spec(RECORD, SETTINGS.max_batch_records),
                 output_spec=CONTRACT.batch_response_type)  # fmt: skip
    def predict_batch(self, instances: list) -> dict:
        """Predict up to XGB_MAX_BATCH_RECORDS records, answered in order."""
        return {"predictions": self.prediction_bodies(self.batch_rows(instances), self.rollout.for_request())}

    @bentoml.api(route="/explain", input_spec=RECORD, output_spec=explanation_type(CONTRACT))
    def explain(self, **fields: Any) -> dict:
        """Explain one record's prediction (exact TreeSHAP), for its predicted class."""
        return self.explainer_for().explain(self.record_rows(fields))[0]

    @bentoml.api(route="/explain_batch", input_spec=client_api.batch_spec(RECORD, min(MAX_EXPLAIN_RECORDS, SETTINGS.max_batch_records), "ExplainBatchRequest"),
                 output_spec=batch_explanations_type(CONTRACT))  # fmt: skip
    def explain_batch(self, instances: list) -> dict:
        """Explain up to 1,000 records' predictions, answered in order."""
        return {"explanations": self.explainer_for().explain(self.batch_rows(instances))}

    def record_rows(self, fields: dict[str, Any]) -> np.ndarray:
        """The one record BentoML's validated keyword arguments make, as the model's feature row."""
        return encode(self.bundle.schema, [client_api.record_from(fields, self.contract)])

    def batch_rows(self, instances: list) -> np.ndarray:
        """BentoML's validated batch request's records, as the model's feature rows."""
        return encode(self.bundle.schema, [r.model_dump(by_alias=True) for r in instances])

    @bentoml.api(
        batchable=True, batch_dim=0, max_batch_size=SETTINGS.batch_max_size, max_latency_ms=SETTINGS.batch_max_latency_ms
    )
    async def predict_rows(self, rows: np.ndarray) -> np.ndarray:
        """/predict's JSON answers, one per row, as bytes (internal: fed by /predict's batching).

        Encoded here, once per batch, so that a request's own work after the model is only writing them.
        """
        return np.array([orjson.dumps(body) for body in self.prediction_bodies(rows)], dtype=object)


if SETTINGS.cors_origins:  # for BentoML's routes; PredictionRoutes applies the same to its own
    XGBoostService.add_asgi_middleware(CORSMiddleware, **cors_options(SETTINGS))
XGBoostService.add_asgi_middleware(
    PredictionRoutes,
    settings=SETTINGS,
    contract=CONTRACT,
    card=model_card(BUNDLE, CANDIDATE, SETTINGS.candidate_mode, SETTINGS.candidate_percent),
    client_schema=client_api.client_schema(XGBoostService.schema(), "predict_rows"),
)
