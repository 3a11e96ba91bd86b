"""The monitoring stack against a real service: a real Prometheus (scraping every second),
Alertmanager and node exporter from the Debian packages, started by the same code as
`make monitor` (monitoring/localstack.py), loading every rule file with `for:` shortened.

The service is provoked the ways production breaks: valid, invalid (4xx) and out-of-range
requests, bursts it sheds (503 + Retry-After: XGB_MAX_INFLIGHT is small here), a SIGKILLed
worker, and in the end a stop. Then:
- counters grow by exactly what was sent; `promtool check metrics` accepts the live /metrics;
- the memory gauge forgets the killed worker, the CPU counter does not reset;
- every dashboard query returns data (except nginx's, docker-compose only, and the rollout row's,
  which needs a candidate model: tests/test_rollout.py), and the panels show
  the shedding, the rejected requests and the restart;
- the alerts the provocations call for fire and reach the webhook through Alertmanager, with
  absolute runbook URLs; XGBServiceDown fires on the stop and inhibits that instance's alerts.
Takes ~1-2 min (a service start, Prometheus' target discovery, the worker's replacement).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from testkit.waiting import wait_until
from testkit.probes import exposed
from testkit.servers import REPO, free_port, worker_pids
from test_resilience import burst

from model_store.dataset import sample_records
from monitoring import check_dashboards, dashboards, localstack

# Dashboard queries with no data without nginx (the docs' count, test_docs_figures.py). Every other
# query has data even on a healthy service (BentoML starts each route's 200 and 500 series at 0),
# except the rollout row's, which need a candidate model (XGB_CANDIDATE_TAG).
NEEDS_NGINX = {"nginx up", "nginx requests per second", "nginx connections"}  # docker-compose only
NEEDS_CANDIDATE = {p.title for p in dashboards.ROLLOUT.panels}  # XGB_CANDIDATE_TAG: tests/test_rollout.py checks them
SCANNED_PATHS = ("/wp-login.php", "/.env")  # what scanners try: must not become series in Prometheus
# At least the 1,000 requests in an hour the availability burn-rate alerts need before they page.
SINGLE_PREDICTIONS = 1100
BATCHES, BATCH_SIZE = 10, 50
INVALID = 15
OUT_OF_RANGE = 12
MAX_INFLIGHT = 4  # per worker: bursts beyond it are shed
BURST = 200  # single records at once: shed only if they arrive faster than they are answered
BIG_BATCHES, BIG_BATCH_SIZE = 24, 500  # large batches at once: each body takes a while to read, so they overlap and are shed
# What the provocations must fire (with `for:` shortened): shedding 503s (over 1 %: a warning;
# over 1.44 % of an hour's 1,000+ requests: the availability fast burn), the killed worker, the
# deliberately broken rule, and the always-firing Watchdog.
PROVOKED = {"XGBOverloaded", "XGBAvailabilityFastBurn", "XGBWorkerRestarted", "PrometheusRuleEvaluationFailures", "Watchdog"}
# A rule that fails at every evaluation (many-to-many matching): PrometheusRuleEvaluationFailures.
BROKEN_RULES = {"groups": [{"name": "deliberately-broken", "rules": [{"record": "broken:up", "expr": "up * on() group_left() up"}]}]}
RUNBOOK_BASE = yaml.safe_load(localstack.PROMETHEUS_CONFIG.read_text())["global"]["external_labels"]["runbook_base"]


def new_ports() -> localstack.Ports:
    return localstack.Ports(free_port(), free_port(), free_port(), free_port())


def query(stack: localstack.LocalStack, expr: str) -> list[dict]:
    response = requests.get(f"{stack.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    return body["data"]["result"]


def scalar(stack: localstack.LocalStack, expr: str) -> float | None:
    result = query(stack, expr)
    return float(result[0]["value"][1]) if result else None


def panel(stack: localstack.LocalStack, title: str) -> dict[str, float]:
    """A dashboard panel's first query as Grafana runs it ($instance = All): legend-ish label text -> value."""
    (expr,) = [q.expr for d in dashboards.DASHBOARDS for t, q in d.queries() if t == title][:1]
    return {json.dumps(r["metric"], sort_keys=True): float(r["value"][1]) for r in query(stack, check_dashboards.expand(expr))}


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    return wait_until(condition, timeout, what, interval)


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def send_traffic(base_url: str, seed: int, singles: int = SINGLE_PREDICTIONS, batches: int = BATCHES) -> dict[str, int]:
    """Valid single and batch predictions (concurrent, so batching forms batches and some are shed),
    invalid requests (4xx), records with an out-of-range value (counted, still predicted:
    XGB_RANGE_CHECK=warn) and a burst the service sheds. Returns what was answered, by kind."""
    rng = np.random.default_rng(seed)
    records = sample_records(rng, singles + batches * BATCH_SIZE)
    out_of_range = [{**r, "feat1": 500.0} for r in sample_records(rng, OUT_OF_RANGE)]
    body = json.dumps(records[0]).encode()
    big_batch = json.dumps({"instances": sample_records(rng, BIG_BATCH_SIZE)}).encode()
    with requests.Session() as session:

        def post(path: str, payload) -> int:
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            return session.post(f"{base_url}{path}", data=data, headers={"content-type": "application/json"}, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            single_codes = list(pool.map(lambda r: post("/predict", r), records[:singles] + out_of_range))
            batch_codes = list(pool.map(lambda i: post("/predict_batch", {"instances": records[singles + i * BATCH_SIZE:singles + (i + 1) * BATCH_SIZE]}),
                                        range(batches)))  # fmt: skip
        burst_answers = burst(base_url, "/predict", body, BURST)
        big_codes = [status for status, _, _ in burst(base_url, "/predict_batch", big_batch, BIG_BATCHES)]
        invalid_codes = [post("/predict", b'{"feat1": "not a number"}' if i % 2 else b"{not json") for i in range(INVALID)]
        for path in SCANNED_PATHS:
            assert session.get(f"{base_url}{path}", timeout=10).status_code == 404
    burst_codes = [status for status, _, _ in burst_answers]
    codes = single_codes + batch_codes + burst_codes + big_codes
    assert set(codes) <= {200, 503} and all(400 <= c < 500 for c in invalid_codes), (set(codes), invalid_codes)
    assert all(h.get("retry-after") == "1" for status, h, _ in burst_answers if status == 503)
    range_codes = single_codes[singles:]
    return {
        "predictions": single_codes.count(200) + burst_codes.count(200) + BATCH_SIZE * batch_codes.count(200)
        + BIG_BATCH_SIZE * big_codes.count(200),
        "predict_requests": len(single_codes) + len(burst_codes) + INVALID,
        "prediction_requests": len(codes) + INVALID,
        "shed": codes.count(503),
        "out_of_range": range_codes.count(200),
    }


@pytest.fixture(scope="module")
def server(server_factory):
    """A service of this module's own: small in-flight limit, and stopped by the last test."""
    return server_factory({"XGB_MAX_INFLIGHT": str(MAX_INFLIGHT)}, workers=2)


@pytest.fixture(scope="module")
def scraped(server, tmp_path_factory):
    """A real Prometheus + Alertmanager on every rule file (`for:` shortened to 2 s, plus a broken
    rule), scraping the service while it is provoked; its webhook payloads collected."""
    workdir = tmp_path_factory.mktemp("monitor")
    rule_files = []
    for path in localstack.rule_paths():
        rules = yaml.safe_load(path.read_text())
        for rule in (r for g in rules["groups"] for r in g["rules"] if "for" in r):
            rule["for"] = "2s"
        rule_files.append(workdir / path.name)
        rule_files[-1].write_text(yaml.safe_dump(rules))
    rule_files.append(workdir / "broken.yml")
    rule_files[-1].write_text(yaml.safe_dump(BROKEN_RULES))
    ports = new_ports()
    alertmanager = localstack.local_alertmanager_config(ports)
    for route in [alertmanager["route"], *alertmanager["route"]["routes"]]:
        route["group_wait"] = route["group_interval"] = "1s"
    received: list[dict] = []
    stack = localstack.LocalStack(workdir / "stack", f"127.0.0.1:{server.port}", ports, interval="1s", rule_files=rule_files,
                                  alertmanager_config=alertmanager, alert_sink=received.append)  # fmt: skip
    started = time.monotonic()
    with stack:
        print(f"\nPrometheus on {stack.prometheus_url}, waiting for the first scrapes", flush=True)
        # Both targets must have been scraped: min() over only the node exporter's `up` would pass too.
        wait_for(lambda: scalar(stack, 'count(up{job=~"xgb-service|node"} == 1)') == 2, 60, "the service and node exporter to be scraped")
        totals = {"predictions": 'sum(xgb_predictions_total{job="xgb-service"})',
                  "predict_requests": 'sum(bentoml_service_request_total{job="xgb-service",endpoint="/predict"})',
                  "shed": 'sum(bentoml_service_request_total{job="xgb-service",http_response_code="503"})',
                  "out_of_range": 'sum(xgb_input_out_of_range_total{job="xgb-service"})'}  # fmt: skip
        # A warm-up round first: a series' first sample has nothing to take a rate from, so every
        # series exists and has been scraped before the traffic the checks are judged on.
        warm = send_traffic(server.url, seed=1, singles=20, batches=2)
        assert warm["shed"], f"bursts of {BURST} records and {BIG_BATCHES} batches against 2 x {MAX_INFLIGHT} slots shed nothing"
        # (a fresh service: its counters are exactly the warm-up's once it has all been scraped)
        wait_for(lambda: all(scalar(stack, expr) == warm[key] for key, expr in totals.items()), 30, "the warm-up to be scraped")
        before = {key: scalar(stack, expr) for key, expr in totals.items()}
        sent = send_traffic(server.url, seed=2)
        print(f"sent {sent}; {time.monotonic() - started:.1f} s since the stack started", flush=True)
        wait_for(lambda: scalar(stack, totals["predictions"]) == before["predictions"] + sent["predictions"], 30, "the traffic to be scraped")

        # A worker SIGKILLed (as the OOM killer does) and replaced by BentoML's process manager.
        cpu_before = scalar(stack, 'xgb_process_cpu_seconds_total{job="xgb-service"}')
        workers = worker_pids(server)
        victim = min(workers)
        victim_rss = resident_bytes(victim)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(worker_pids(server) - {victim}) == 2, 60, "the killed worker to be replaced")
        wait_for(lambda: requests.get(f"{server.url}/readyz", timeout=5).status_code == 200, 60, "the service to be ready")
        print(f"worker {victim} ({victim_rss / 2**20:.0f} MiB) killed and replaced; {time.monotonic() - started:.1f} s", flush=True)
        yield stack, totals, before, sent, received, {"cpu_before": cpu_before, "victim_rss": victim_rss}


def test_prometheus_sees_every_worker(scraped):
    """Counter increases equal what was sent: /metrics sums all workers, whichever answers."""
    stack, totals, before, sent, *_ = scraped
    assert sent["shed"] and sent["prediction_requests"] >= 1000, sent
    for key, expr in totals.items():
        wait_for(lambda: scalar(stack, expr) >= before[key] + sent[key], 15, f"{expr} to grow by {sent[key]}")
        assert scalar(stack, expr) == before[key] + sent[key], key


def test_promtool_accepts_the_live_metrics(server, scraped):
    """`promtool check metrics` on the /metrics of a real `bentoml serve` after every kind of answer."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    for series in ('http_response_code="503"', 'http_response_code="422"', "xgb_process_cpu_seconds_total", "xgb_worker_starts_total",
                   'request_duration_seconds_bucket{endpoint="/predict",http_response_code="200",le="0.00025"'):  # sub-millisecond buckets
        assert series in text, series
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    assert "# TYPE xgb_process_cpu_seconds_total counter" in text  # a counter now, so rate() is right


def test_a_killed_workers_memory_leaves_the_sum_and_its_cpu_seconds_stay(server, scraped):
    stack, *_, extra = scraped
    # The gauge sums the live workers only (a SIGKILLed worker cannot remove its own value: the
    # others do); with the dead worker's value kept it would read ~1.5x the live workers' memory.
    def matches_live_workers() -> bool:
        live = sum(resident_bytes(pid) for pid in worker_pids(server))
        return abs(exposed(server.url, "xgb_process_resident_memory_bytes") - live) < 0.2 * live

    wait_for(matches_live_workers, 30, "the memory gauge to equal the live workers' resident memory", interval=1)
    # The CPU seconds are a counter: the dead worker's seconds stay in the sum, so no reset.
    wait_for(lambda: scalar(stack, 'xgb_process_cpu_seconds_total{job="xgb-service"}') > extra["cpu_before"], 30, "CPU seconds to grow")
    assert scalar(stack, 'resets(xgb_process_cpu_seconds_total{job="xgb-service"}[10m])') == 0


def test_every_dashboard_query_returns_data_and_the_panels_show_what_happened(scraped):
    stack, *_ = scraped
    wait_for(lambda: max(panel(stack, "Worker restarts (last 15 minutes)").values(), default=0) >= 1, 30, "the restart to be scraped")
    results = check_dashboards.evaluate(stack.prometheus_url)
    listed = NEEDS_NGINX | NEEDS_CANDIDATE
    assert listed <= {r.panel for r in results}, "NEEDS_* lists a panel that no longer exists"
    failed = [f"{r.dashboard} / {r.panel}: {r.error}" for r in results if r.error]
    assert not failed, "dashboard queries Prometheus refused:\n" + "\n".join(failed)
    empty = [f"{r.dashboard} / {r.panel}: {r.expr}" for r in results if not r.has_data and r.panel not in listed]
    with_data = sum(r.has_data for r in results)
    print(f"{with_data} of {len(results)} dashboard queries return data ({100 * with_data / len(results):.0f} %)")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
    # What the panels show is what happened (rates over check_dashboards' 1m $__rate_interval):
    reasons = {json.loads(k).get("reason") for k in panel(stack, "Rejected requests by reason")}
    assert {"invalid_input", "overloaded"} <= reasons, reasons
    assert max(panel(stack, "Overload: shed requests % (503 + Retry-After)").values()) > 1
    assert max(panel(stack, "Availability: failed share of prediction requests by window").values()) > 0.0144
    # 5xx by endpoint: the shed 503s, nothing else (BentoML's placeholder 500 series stay at 0)
    errors = {k: v for k, v in panel(stack, "Server errors and shed requests by endpoint").items() if v > 0}
    assert {json.loads(k)["http_response_code"] for k in errors} == {"503"}, errors
    p50, p95, p99 = (scalar(stack, check_dashboards.expand(q.expr))
                     for q in dashboards.SERVICE.rows[2].panels[0].queries)  # fmt: skip
    assert 0 < p50 <= p95 <= p99 and p50 < 0.05, (p50, p95, p99)  # measured in sub-millisecond buckets


def test_unknown_paths_do_not_become_series(server, scraped):
    """BentoML labels requests with the raw path; prometheus.yml drops the paths that are not routes."""
    stack, *_ = scraped
    exposed_text = requests.get(f"{server.url}/metrics", timeout=10).text
    for path in SCANNED_PATHS:
        assert f'endpoint="{path}"' in exposed_text  # the service does expose them...
        assert not query(stack, f'{{job="xgb-service",endpoint="{path}"}}'), path  # ...Prometheus keeps none
    assert query(stack, 'bentoml_service_request_total{job="xgb-service",endpoint="/predict"}')


def test_model_metrics_reach_prometheus(scraped):
    stack, *_ = scraped
    priors = {r["metric"]["predicted_class"]: float(r["value"][1]) for r in query(stack, 'xgb_class_prior{job="xgb-service"}')}
    assert set(priors) == {"0", "1", "2", "3", "4"} and math.isclose(sum(priors.values()), 1, abs_tol=0.01)
    versions = query(stack, 'xgb_model_info{job="xgb-service"}')
    assert len(versions) == 1 and versions[0]["metric"]["model_version"]
    assert query(stack, 'xgb_input_out_of_range_total{job="xgb-service",feature="feat1"}')


def firing(stack: localstack.LocalStack) -> dict[str, dict]:
    alerts = requests.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return {a["labels"]["alertname"]: a for a in alerts if a["state"] == "firing"}


def inhibited(stack: localstack.LocalStack) -> dict[str, bool]:
    """Alertmanager's alerts: name -> whether an inhibit rule silences it."""
    alerts = requests.get(f"{stack.alertmanager_url}/api/v2/alerts", timeout=5).json()
    return {a["labels"]["alertname"]: bool(a["status"]["inhibitedBy"]) for a in alerts}


def delivered(received: list[dict]) -> dict[str, dict]:
    return {a["labels"]["alertname"]: a for p in received for a in p["alerts"] if a["status"] == "firing"}


def test_the_provoked_alerts_fire_and_reach_the_webhook(scraped):
    stack, *_, received, _ = scraped
    wait_for(lambda: PROVOKED <= firing(stack).keys(), 60, f"{PROVOKED} to fire (firing: {sorted(firing(stack))})")
    wait_for(lambda: PROVOKED <= delivered(received).keys(), 60, f"Alertmanager to deliver them (delivered: {sorted(delivered(received))})")
    print(f"firing: {sorted(firing(stack))}")
    for name in PROVOKED:
        assert delivered(received)[name]["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}"
    assert delivered(received)["PrometheusRuleEvaluationFailures"]["labels"]["rule_group"].endswith(";deliberately-broken")
    assert "XGBServiceDown" not in firing(stack)
    # The 3-day budget burns too, but while the fast-burn page of the same SLO fires, Alertmanager
    # holds the ticket back.
    wait_for(lambda: "XGBAvailabilityBudgetBurn" in firing(stack), 30, "the 3-day availability burn to fire")
    wait_for(lambda: inhibited(stack).get("XGBAvailabilityBudgetBurn"), 30, "the ticket to be inhibited by the page")
    assert "XGBAvailabilityBudgetBurn" not in delivered(received)


def test_service_down_fires_and_silences_that_instances_alerts(server, scraped):
    """Runs last: stops the service. XGBServiceDown (real expression, `for:` 2 s) fires, reaches the
    webhook, and Alertmanager inhibits the other alerts of that instance, not the fleet-wide SLO page."""
    stack, *_, received, _ = scraped
    wait_for(lambda: {"XGBWorkerRestarted", "XGBAvailabilityFastBurn"} <= delivered(received).keys(), 60, "the alerts to silence")
    instance = f"127.0.0.1:{server.port}"
    server.stop()
    stopped = time.monotonic()
    down = wait_for(lambda: delivered(received).get("XGBServiceDown"), 60, "XGBServiceDown to reach the webhook")
    print(f"\nXGBServiceDown delivered {time.monotonic() - stopped:.1f} s after the stop: {down['annotations']['summary']}")
    assert down["labels"]["instance"] == instance and down["labels"]["severity"] == "critical"
    assert down["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}#xgbservicedown"

    state = wait_for(lambda: (s := inhibited(stack)).get("XGBWorkerRestarted") and s, 30, "XGBWorkerRestarted to be inhibited")
    assert state["XGBAvailabilityFastBurn"] is False and state["XGBServiceDown"] is False


def test_make_monitor_entry_point_starts_and_stops_cleanly(tmp_path):
    """`make monitor`'s command: prints where things run, and SIGTERM (like Ctrl-C) stops every process."""
    ports = new_ports()
    argv = [sys.executable, "-m", "monitoring.localstack", "--target", f"127.0.0.1:{free_port()}", "--workdir", str(tmp_path)]
    argv += [f"--{name.replace('_', '-')}-port={port}" for name, port in vars(ports).items()]
    with subprocess.Popen(argv, cwd=localstack.MONITORING_DIR.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:  # fmt: skip
        try:
            lines = []
            while not any("Ctrl-C stops everything" in line for line in lines):
                line = proc.stdout.readline()
                assert line, "the stack exited before it was up:\n" + "".join(lines)
                lines.append(line)
            for url in (f"http://127.0.0.1:{ports.prometheus}/-/ready", f"http://127.0.0.1:{ports.alertmanager}/-/ready",
                        f"http://127.0.0.1:{ports.node_exporter}/metrics"):  # fmt: skip
                assert requests.get(url, timeout=5).status_code == 200, url
            config = yaml.safe_load((tmp_path / "prometheus.yml").read_text())
            assert config["rule_files"] == [str(p) for p in localstack.RULE_FILES]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, proc.stdout.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    for port in (ports.prometheus, ports.alertmanager, ports.node_exporter, ports.alert_logger):
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_the_prometheus_pages_the_docs_name_are_served_at_those_paths(scraped):
    """docs/monitoring.md names Prometheus' own pages (Debian's 2.42 serves its classic UI under /classic/)."""
    stack = scraped[0]
    pages = set(re.findall(r"http://127\.0\.0\.1:9090(/[\w/.-]+)", (REPO / "docs/monitoring.md").read_text()))
    assert len(pages) >= 3, pages
    for page in pages:
        answer = requests.get(stack.prometheus_url + page, timeout=10, allow_redirects=False)
        assert answer.status_code == 200, f"{page}: {answer.status_code} {answer.headers.get('location', '')}"


def test_nginx_in_front_of_the_service_forwards_and_rate_limits(live_server, tmp_path):
    """monitoring/nginx.conf run by a real nginx in front of a real service: predictions pass,
    stub_status answers (nginx-exporter's source), and a burst from one address over limit_req's
    burst gets nginx's own 429 + Retry-After (the service itself never sends 429)."""
    from test_monitoring_config import nginx_argv

    listen, status = free_port(), free_port()
    argv = nginx_argv(tmp_path, live_server.removeprefix("http://"), listen, status)
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as nginx:
        try:
            url = f"http://127.0.0.1:{listen}"
            def listening() -> bool:
                assert nginx.poll() is None, nginx.stderr.read()
                try:
                    return requests.get(f"http://127.0.0.1:{status}/stub_status", timeout=2).ok
                except requests.ConnectionError:
                    return False

            wait_for(listening, 15, "nginx to listen")
            record = sample_records(np.random.default_rng(3), 1)[0]
            answer = requests.post(f"{url}/predict", json=record, timeout=10)
            assert answer.status_code == 200 and "predicted_class" in answer.json()
            assert requests.get(f"{url}/metrics", timeout=10).status_code == 404  # scraped directly, not via nginx
            answers = burst(url, "/predict", json.dumps(record).encode(), 600)
            limited = [(headers, body) for code, headers, body in answers if code == 429]
            print(f"600 requests at once through nginx: {len(answers) - len(limited)} passed, {len(limited)} rate limited")
            assert limited and {code for code, _, _ in answers} <= {200, 429, 503}
            assert all(h.get("retry-after") == "1" and "rate limited" in json.loads(b)["error"] for h, b in limited)
            assert "Active connections" in requests.get(f"http://127.0.0.1:{status}/stub_status", timeout=5).text
        finally:
            nginx.terminate()
            nginx.wait(10)
