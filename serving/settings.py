"""Runtime settings, all from environment variables (documented in the README's Configuration)."""

from __future__ import annotations

import dataclasses
import os


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.strip() else default


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw.strip() else default


@dataclasses.dataclass(frozen=True)
class Settings:
    # Worker processes; 0 means one per CPU.
    workers: int = dataclasses.field(default_factory=lambda: _int("XGB_WORKERS", 0))
    # What to do with a value outside the schema's range: count it (warn), refuse it (reject), or not look (off).
    range_check: str = dataclasses.field(default_factory=lambda: os.environ.get("XGB_RANGE_CHECK", "warn"))
    max_batch_records: int = dataclasses.field(default_factory=lambda: _int("XGB_MAX_BATCH_RECORDS", 5000))
    max_predict_bytes: int = dataclasses.field(default_factory=lambda: _int("XGB_MAX_PREDICT_BYTES", 64 * 1024))
    max_batch_bytes: int = dataclasses.field(default_factory=lambda: _int("XGB_MAX_BATCH_BYTES", 8 * 1024 * 1024))
    # Overload protection, per worker: predictions in flight beyond this get 503 + Retry-After at once.
    # The benchmark's 64 connections put ~32 in flight per worker; 4x that leaves room for bursts.
    max_inflight: int = dataclasses.field(default_factory=lambda: _int("XGB_MAX_INFLIGHT", 128))
    # BentoML adaptive batching of single records: rows per model call, and the latency budget of
    # BentoML's dispatcher. The dispatcher cancels (503) a queued request as soon as its *projected*
    # latency (wait so far + a fitted cost per queued request) exceeds the budget; with a budget near
    # the model's batch time (BentoML's examples use 10-100 ms) a burst of 32+ requests is shed
    # although the service is not overloaded. So the budget is generous, and overload is handled by
    # XGB_MAX_INFLIGHT, which is exact and cheap.
    batch_max_size: int = dataclasses.field(default_factory=lambda: _int("XGB_BATCH_MAX_SIZE", 128))
    batch_max_latency_ms: int = dataclasses.field(default_factory=lambda: _int("XGB_BATCH_MAX_LATENCY_MS", 5000))
    # /predict_batch's model calls, per worker: threads that run them (a worker has one core's share)
    # and how many more may wait for one before the request is answered 503 + Retry-After.
    batch_threads: int = dataclasses.field(default_factory=lambda: _int("XGB_BATCH_THREADS", 1))
    batch_queue: int = dataclasses.field(default_factory=lambda: _int("XGB_BATCH_QUEUE", 8))
    # Seconds a request may take: BentoML's traffic timeout (504) and the prediction routes' body read (408).
    request_timeout_s: float = dataclasses.field(default_factory=lambda: _float("XGB_REQUEST_TIMEOUT_S", 30.0))
    # Each worker listens on its own SO_REUSEPORT socket (Linux), so the kernel spreads connections evenly.
    reuse_port: bool = dataclasses.field(default_factory=lambda: os.environ.get("XGB_REUSEPORT", "1") != "0")
    # Optional API key for /predict*; empty means no authentication.
    api_key: str = dataclasses.field(default_factory=lambda: os.environ.get("XGB_API_KEY", ""))
    # Comma-separated CORS origins; empty means CORS is off.
    cors_origins: tuple[str, ...] = dataclasses.field(
        default_factory=lambda: tuple(o.strip() for o in os.environ.get("XGB_CORS_ORIGINS", "").split(",") if o.strip())
    )

    def __post_init__(self) -> None:
        if self.range_check not in ("warn", "reject", "off"):
            raise ValueError(f"XGB_RANGE_CHECK must be warn, reject or off, got {self.range_check!r}")


SETTINGS = Settings()
