"""Locust load test of the XGBoost prediction service.

User classes (pick one on the command line; `make loadtest` and `make stress` do):
    ApiUser      realistic traffic: /predict (80 %), /predict_batch of 2-64 records (10 %), health checks (10 %)
    HealthUser   the liveness and readiness endpoints only
    ExampleUser  one /predict with the served model's example record; prints the answer (headless: ends the run)

The feature names, example record and class names are the served model's: read from its GET
/metadata when the first user starts, so the same file load-tests any model.

Each user sends --user-rps requests per second (constant throughput), so the offered load is
users x user-rps as long as answers take less than 1 / user-rps: 60 users at 5 req/s each = 300 req/s. When the test stops,
the SLO verdict (loadtest/slo.py) is printed and a missed objective makes Locust exit with 1.

    # the web UI on :8089 (`make loadtest`)
    locust -f loadtest/locustfile.py --host http://localhost:3000 ApiUser
    # 300 req/s for 60 s, judged (`make stress MODE=stress` runs this, plus reports)
    locust -f loadtest/locustfile.py --host http://localhost:3000 --headless -u 60 -r 100 -t 60s \
        --user-rps 5 --target-rps 300 ApiUser
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from pathlib import Path

import gevent
import gevent.lock
import orjson
from locust import FastHttpUser, constant_throughput, events, task
from locust.exception import StopUser
from locust.runners import STATE_RUNNING, STATE_SPAWNING, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # model_store and loadtest, from any cwd

from loadtest import slo  # noqa: E402
from loadtest.traffic import RequestPool, ServedModel  # noqa: E402

BATCH_SIZES = (2, 64)
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    group = parser.add_argument_group("XGBoost service load test")
    group.add_argument("--user-rps", type=float, default=5.0, help="requests per second each user sends (default 5)")
    group.add_argument("--target-rps", type=float, default=0.0, help="rate objective in req/s; 0 = none (default 0)")
    group.add_argument("--slo-p99-ms", type=float, default=100.0, help="p99 latency objective in ms (default 100)")
    group.add_argument("--slo-max-failures", type=int, default=0, help="failed requests allowed (default 0)")


JSON_HEADERS = {"Content-Type": "application/json"}
if os.environ.get("XGB_API_KEY"):  # the service's optional API key, from the same variable
    JSON_HEADERS["X-API-Key"] = os.environ["XGB_API_KEY"]


class _PacedUser(FastHttpUser):
    """A user sending --user-rps requests per second, its phase random so users do not fire in step."""

    abstract = True

    def on_start(self) -> None:
        rate = self.environment.parsed_options.user_rps
        self._pace = constant_throughput(rate)
        # Users are spawned within a fraction of a second; without a random phase they would all
        # fire at the same instant every period, a burst the service would see as a spike.
        gevent.sleep(random.random() / rate)
        self._cp_last_run = time.perf_counter()  # constant_throughput's clock: start it after the phase delay

    def wait_time(self) -> float:
        return self._pace(self)

    def get_health(self, path: str) -> None:
        with self.client.get(path, name=path, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code} from {path}: {(resp.text or '')[:200]}")


_served: dict[str, tuple[ServedModel, RequestPool]] = {}
_served_lock = gevent.lock.Semaphore()


def served(host: str) -> tuple[ServedModel, RequestPool]:
    """The served model and one request pool for it, per Locust process, shared by its users (~0.2 s, once)."""
    with _served_lock:
        if host not in _served:
            model = ServedModel.fetch(host)
            _served[host] = (model, RequestPool(model))
        return _served[host]


class ApiUser(_PacedUser):
    """Realistic traffic: records drawn from the served model's features (see loadtest/traffic.py)."""

    def on_start(self) -> None:
        self.model, self.pool = served(self.host)
        super().on_start()

    @task(16)
    def predict(self) -> None:
        with self.client.post(
            "/predict", data=self.pool.record_body(), headers=JSON_HEADERS, name="/predict", catch_response=True
        ) as resp:
            _judge(resp, self.model.check_prediction)

    @task(2)
    def predict_batch(self) -> None:
        size = random.randint(*BATCH_SIZES)
        with self.client.post(
            "/predict_batch", data=self.pool.batch_body(size), headers=JSON_HEADERS, name="/predict_batch", catch_response=True
        ) as resp:
            _judge(resp, lambda body: self.model.check_batch(body, size))

    @task(2)
    def health(self) -> None:
        self.get_health(random.choice(HEALTH_PATHS))


class HealthUser(_PacedUser):
    """Liveness and readiness checks, one endpoint per request, in turn."""

    def on_start(self) -> None:
        self._paths = itertools.cycle(HEALTH_PATHS)
        super().on_start()

    @task
    def health(self) -> None:
        self.get_health(next(self._paths))


class ExampleUser(FastHttpUser):
    """The seed's `single` mode: one prediction for the served model's example record, printed."""

    @task
    def predict_example(self) -> None:
        model, _ = served(self.host)
        with self.client.post(
            "/predict", data=model.example_body, headers=JSON_HEADERS, name="/predict (seed example)", catch_response=True
        ) as resp:
            _judge(resp, model.check_prediction)
            print(f"\nPOST {self.host}/predict (seed example) -> HTTP {resp.status_code}\n{_pretty(resp.text)}\n", flush=True)
        if self.environment.parsed_options.headless:
            self.environment.runner.quit()  # `make stress MODE=single`: the run is this one request
        else:
            raise StopUser()  # in the web UI, end this user only, not the UI


def _judge(resp, check) -> None:
    """Mark the response failed unless it is a 200 whose JSON body passes `check`."""
    if resp.status_code != 200:
        resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
        return
    try:
        body = orjson.loads(resp.content)
    except orjson.JSONDecodeError as exc:
        resp.failure(f"body is not JSON ({exc}): {(resp.text or '')[:200]}")
        return
    if reason := check(body):
        resp.failure(reason)


def _pretty(text: str | None) -> str:
    try:
        return json.dumps(json.loads(text or ""), indent=2)
    except ValueError:
        return text or "(empty body)"


@events.init.add_listener
def refresh_event_loop_clock(**_) -> None:
    # gevent's loop caches "now" at its last iteration, which was before this file's imports (~0.5 s
    # of numpy and model_store): --run-time, scheduled next with spawn_later, would end a run that
    # much early. Refreshing the clock here makes a 10 s run last 10 s.
    gevent.get_hub().loop.update_now()


@events.init.add_listener
def report_slo_verdict(environment, **_) -> None:
    """Judge each test; the master (or the only process) judges, workers see only their share.

    Headless runs are judged when Locust quits, on the same final numbers as its CSV report, and
    the verdict is printed after Locust's own tables; in the web UI, each test when it is stopped.
    """
    if isinstance(environment.runner, WorkerRunner):
        return
    opts = environment.parsed_options
    verdicts: list[slo.Verdict] = []

    def judge() -> slo.Verdict:
        # Read the objectives now: the web UI may have changed them for this test.
        objectives = slo.Objectives(max_failures=opts.slo_max_failures, p99_ms=opts.slo_p99_ms, target_rps=opts.target_rps)
        stats = environment.stats
        endpoints = [_row(e, f"{e.method} {e.name}") for e in sorted(stats.entries.values(), key=lambda e: (e.name, e.method))]
        verdict = slo.judge(_row(stats.total, "all requests"), endpoints, objectives)
        # None lets Locust apply its own rules (e.g. an exception in a task -> exit code 1).
        environment.process_exit_code = None if verdict.passed else 1
        return verdict

    @environment.events.test_stop.add_listener
    def judge_stopped_test(**_) -> None:
        if not opts.headless:
            print(judge().report(), flush=True)

    @environment.events.quitting.add_listener
    def judge_headless_run(**_) -> None:
        if opts.headless:
            verdicts.append(judge())
            if opts.csv_prefix:
                # Locust rewrites the CSV stats every CSV_STATS_INTERVAL_SEC and not at exit, so
                # they could miss the last second; one more interval makes them the final numbers.
                gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.1)

    @environment.events.quit.add_listener
    def print_verdict(**_) -> None:
        if verdicts:
            print(verdicts[-1].report(), flush=True)

    @environment.events.test_start.add_listener
    def start_progress(**_) -> None:
        if opts.headless:  # --only-summary silences Locust's periodic tables; one line per period says it is alive
            gevent.spawn(_print_progress, environment)


def _row(entry, name: str) -> slo.Row:
    return slo.Row(
        name=name,
        requests=entry.num_requests,
        failures=entry.num_failures,
        rps=entry.total_rps,
        p50_ms=entry.get_response_time_percentile(0.50) or 0.0,
        p95_ms=entry.get_response_time_percentile(0.95) or 0.0,
        p99_ms=entry.get_response_time_percentile(0.99) or 0.0,
        max_ms=entry.max_response_time or 0.0,
    )


PROGRESS_SECONDS = 10


def _print_progress(environment) -> None:
    started = time.monotonic()
    while True:
        gevent.sleep(PROGRESS_SECONDS)
        if environment.runner.state not in (STATE_SPAWNING, STATE_RUNNING):
            return
        total = environment.stats.total
        print(
            f"[{time.monotonic() - started:4.0f} s] {total.num_requests} requests, {total.num_failures} failures, "
            f"{total.current_rps:.0f} req/s now, p99 so far {total.get_response_time_percentile(0.99) or 0:.0f} ms",
            flush=True,
        )
