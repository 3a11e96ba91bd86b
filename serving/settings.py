"""Runtime settings, all from XGB_* environment variables (documented in the README's Configuration).

Parsed and checked by pydantic-settings. load() turns a bad value into one SettingsError line that
names the variable, the value and what is allowed; the service stops on it before serving.
An empty variable means its default.
"""

from __future__ import annotations

from typing import Any, Literal

from annotated_types import Ge, Gt, Le
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Annotated

PREFIX = "XGB_"


class SettingsError(ValueError):
    """An environment variable the service cannot run with (one line: variable, value, what is allowed)."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=PREFIX, env_ignore_empty=True, frozen=True, extra="ignore", populate_by_name=True)

    # Worker processes; 0 means one per CPU.
    workers: int = Field(0, ge=0)
    # What to do with a value outside the schema's range: count it (warn), refuse it (reject), or not look (off).
    range_check: Literal["warn", "reject", "off"] = "warn"
    max_batch_records: int = Field(5000, ge=1)
    max_predict_bytes: int = Field(64 * 1024, ge=1)
    max_batch_bytes: int = Field(8 * 1024 * 1024, ge=1)
    # Overload protection, per worker: predictions in flight beyond this get 503 + Retry-After at once.
    # Several times what the benchmark's connections put in flight per worker: room for bursts (docs/performance.md).
    max_inflight: int = Field(128, ge=1)
    # /explain*: threads per worker computing explanations (below the event loop's CPU priority), and
    # records that may wait for them per worker before answering 503 (one /explain_batch: up to 1,000;
    # 2,000 are a few seconds of work on one core: docs/performance.md).
    explain_threads: int = Field(1, ge=1)
    explain_queue: int = Field(2000, ge=0)
    # BentoML adaptive batching of single records: rows per model call, and the latency budget of
    # BentoML's dispatcher. The dispatcher cancels (503) a queued request as soon as its *projected*
    # latency (wait so far + a fitted cost per queued request) exceeds the budget; with a budget near
    # the model's batch time (BentoML's examples use 10-100 ms) a burst of 32+ requests is shed
    # although the service is not overloaded. So the budget is generous, and overload is handled by
    # XGB_MAX_INFLIGHT, which is exact and cheap.
    batch_max_size: int = Field(128, ge=1)
    batch_max_latency_ms: int = Field(5000, ge=1)
    # /predict_batch's model calls, per worker: threads that run them, and how many more may wait
    # for one before the request is answered 503 + Retry-After. A worker has one core's share, but
    # XGBoost predicts without the GIL: two let one worker use a second core when the connections
    # land unevenly over the workers (a few connections all on one worker is common).
    batch_threads: int = Field(2, ge=1, le=64)
    batch_queue: int = Field(8, ge=0)
    # Seconds from a request's arrival to its answer on /predict*: 408 while its body is still
    # arriving, 504 once it is predicting (serving/deadlines.py); BentoML's timeout on other routes.
    request_timeout_s: float = Field(30.0, gt=0)
    # Seconds a request's headers may take from its first byte (then 408 and the connection closed),
    # and a new connection may stay silent before its first request (then closed): clients holding
    # connections open by sending headers slowly, or nothing, are cut (serving/uvicorn_internals.py).
    # An idle keep-alive connection between requests is BentoML's `--timeout-keep-alive` (5 s).
    header_timeout_s: float = Field(10.0, gt=0, le=3600)
    idle_timeout_s: float = Field(10.0, gt=0, le=3600)
    # Each worker listens on its own SO_REUSEPORT socket (Linux), so the kernel spreads connections evenly.
    reuse_port: bool = Field(True, validation_alias="XGB_REUSEPORT")
    # Count every predicted record into the model's drift bins (xgb_feature_bin_total), off the
    # request path; off saves that CPU, which only a saturated /predict_batch notices (docs/monitoring.md).
    drift: bool = True
    # Share of /predict* and /explain* requests traced to the collector (serving/tracing.py), for
    # requests without a `traceparent`; a sampled `traceparent` is always traced. 0 turns tracing off.
    trace_sample: float = Field(0.01, ge=0, le=1)
    # Optional API key for /predict*; empty means no authentication.
    api_key: str = ""
    # Comma-separated CORS origins; empty means CORS is off.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return tuple(o.strip() for o in value.split(",") if o.strip()) if isinstance(value, str) else value

    # A candidate model next to the primary (serving/rollout.py): its tag in the store, what it does
    # (shadow: scored and compared off the response path; canary: answers a share of the requests),
    # the canary's share in percent, and the shadow agreement below which the alert fires.
    candidate_tag: str = ""
    candidate_mode: Literal["shadow", "canary"] = "shadow"
    candidate_percent: float = Field(10.0, ge=0, le=100)
    shadow_min_agreement: float = Field(0.6, ge=0, le=1)

    # Capture of the answered records, with their answers, to Parquet (serving/capture.py): off or the
    # percent of records captured; where (a local directory or s3://bucket/prefix); how often a worker
    # writes (seconds, or records pending); how many records a worker may hold before dropping new ones.
    capture: float = Field(0.0, ge=0, le=100, description="off, or a percent from 0 to 100")
    capture_uri: str = Field("", validate_default=True)
    capture_flush_seconds: float = Field(10.0, gt=0)
    capture_flush_rows: int = Field(50_000, ge=1)
    capture_queue_records: int = Field(200_000, ge=1)

    @field_validator("capture", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        return 0.0 if isinstance(value, str) and value.strip().lower() == "off" else value

    @field_validator("capture_uri")
    @classmethod
    def _capture_destination(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("capture") and not value:
            raise ValueError("XGB_CAPTURE is on: set XGB_CAPTURE_URI to a local directory or s3://bucket/prefix")
        if value.startswith("s3://") and not value.removeprefix("s3://").split("/", 1)[0]:
            raise ValueError("an S3 URI names its bucket: s3://bucket/prefix")
        if "://" in value and not value.startswith("s3://"):
            raise ValueError("a local directory or s3://bucket/prefix")
        return value

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Environment variable -> the field it sets."""
        return {variable(name, field): name for name, field in cls.model_fields.items()}


def variable(name: str, field: FieldInfo) -> str:
    return field.validation_alias if isinstance(field.validation_alias, str) else PREFIX + name.upper()


def allowed(field: FieldInfo) -> str:
    """What a field accepts, in words."""
    if field.description:
        return field.description
    if field.annotation is bool:
        return "1 or 0 (or true/false)"
    choices = getattr(field.annotation, "__args__", ())
    if all(isinstance(c, str) for c in choices) and choices:
        return "one of " + ", ".join(choices)
    kind = {int: "an integer", float: "a number"}.get(field.annotation, "text")  # type: ignore[call-overload]
    bounds = []
    for rule in field.metadata:
        if isinstance(rule, Ge):
            bounds.append(f">= {rule.ge}")
        elif isinstance(rule, Gt):
            bounds.append(f"> {rule.gt}")
        elif isinstance(rule, Le):
            bounds.append(f"<= {rule.le}")
    return " ".join([kind, " and ".join(bounds)]).strip()


def load() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        fields = Settings.model_fields
        problems = []
        for error in exc.errors(include_url=False):
            name = next((n for n in fields if n == error["loc"][0] or variable(n, fields[n]) == error["loc"][0]), str(error["loc"][0]))
            field = fields.get(name)
            where = variable(name, field) if field else name
            allowed_text = f"; allowed: {allowed(field)}" if field else ""
            problems.append(f"{where}={error.get('input')!r} is invalid ({error['msg']}){allowed_text}")
        raise SettingsError("; ".join(problems)) from None
