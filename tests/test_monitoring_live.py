"""The monitoring stack against a real service: a real Prometheus (scraping every second),
Alertmanager and node exporter from the Debian packages, started by the same code as
`make monitor` (monitoring/localstack.py).

- every dashboard query returns data once the service has had traffic, except the ones listed
  in NEEDS_ERRORS / NEEDS_NGINX;
- Prometheus sees the whole service (all workers summed), not one worker;
- XGBServiceDown fires when the service stops and reaches the webhook through Alertmanager.
Takes ~40 s (two service starts, Prometheus' 5 s target discovery).
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import yaml
from conftest import REPO, free_port

from model_store.dataset import sample_records
from monitoring import check_dashboards, localstack

# Dashboard queries that have nothing to show on a healthy service, listed rather than skipped:
NEEDS_ERRORS = {"Server errors and shed requests by endpoint"}  # 5xx responses
NEEDS_NGINX = {"nginx up", "nginx requests per second", "nginx connections"}  # docker-compose only
SCANNED_PATHS = ("/wp-login.php", "/.env")  # what scanners try: must not become series in Prometheus
SINGLE_PREDICTIONS = 240
BATCHES, BATCH_SIZE = 10, 50
INVALID = 15
OUT_OF_RANGE = 12


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


def wait_for(condition, timeout: float, what: str, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def send_traffic(base_url: str, seed: int) -> dict[str, int]:
    """Valid single and batch predictions (concurrent, so batching forms batches), invalid requests
    and records with an out-of-range value (counted, still predicted: XGB_RANGE_CHECK=warn)."""
    rng = np.random.default_rng(seed)
    records = sample_records(rng, SINGLE_PREDICTIONS + BATCHES * BATCH_SIZE)
    singles, batched = records[:SINGLE_PREDICTIONS], records[SINGLE_PREDICTIONS:]
    out_of_range = [{**r, "feat1": 500.0} for r in sample_records(rng, OUT_OF_RANGE)]
    with requests.Session() as session:

        def post(path: str, body) -> int:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            return session.post(f"{base_url}{path}", data=data, headers={"content-type": "application/json"}, timeout=30).status_code

        with ThreadPoolExecutor(8) as pool:
            single_codes = list(pool.map(lambda r: post("/predict", r), singles + out_of_range))
            batch_codes = list(pool.map(lambda i: post("/predict_batch", {"instances": batched[i * BATCH_SIZE:(i + 1) * BATCH_SIZE]}),
                                        range(BATCHES)))  # fmt: skip
        invalid_codes = [post("/predict", b'{"feat1": "not a number"}' if i % 2 else b"{not json") for i in range(INVALID)]
        for path in SCANNED_PATHS:
            assert session.get(f"{base_url}{path}", timeout=10).status_code == 404
        assert set(single_codes) == {200} and set(batch_codes) == {200}, (single_codes, batch_codes)
        assert all(400 <= c < 500 for c in invalid_codes), invalid_codes
    return {
        "predictions": SINGLE_PREDICTIONS + OUT_OF_RANGE + BATCHES * BATCH_SIZE,
        "predict_requests": SINGLE_PREDICTIONS + OUT_OF_RANGE + INVALID,
        "out_of_range": OUT_OF_RANGE,
    }


@pytest.fixture(scope="module")
def scraped(live_server, tmp_path_factory):
    """A real Prometheus scraping the shared live service, before and after traffic."""
    stack = localstack.LocalStack(
        tmp_path_factory.mktemp("monitor"), live_server.removeprefix("http://"), new_ports(), interval="1s"
    )
    started = time.monotonic()
    with stack:
        print(f"\nPrometheus on {stack.prometheus_url}, waiting for the first scrapes", flush=True)
        # Both targets must have been scraped: min() over only the node exporter's `up` would pass too.
        wait_for(lambda: scalar(stack, 'count(up{job=~"xgb-service|node"} == 1)') == 2, 30, "the service and node exporter to be scraped")
        totals = ('sum(xgb_predictions_total{job="xgb-service"}) or vector(0)',
                  'sum(bentoml_service_request_total{job="xgb-service",endpoint="/predict"}) or vector(0)',
                  'sum(xgb_input_out_of_range_total{job="xgb-service"}) or vector(0)')  # fmt: skip
        print(f"scraping after {time.monotonic() - started:.1f} s; sending traffic", flush=True)
        before = [scalar(stack, expr) for expr in totals]
        # Two rounds: a series' first sample has nothing to take a rate from, so a running
        # service's series exist before the traffic the dashboards are judged on.
        first = send_traffic(live_server, seed=1)
        wait_for(lambda: scalar(stack, totals[0]) == before[0] + first["predictions"], 15, "the first round to be scraped")
        second = send_traffic(live_server, seed=2)
        sent = {key: first[key] + second[key] for key in first}
        print(f"sent {sent}; {time.monotonic() - started:.1f} s since the stack started", flush=True)
        yield stack, totals, before, sent


def test_prometheus_sees_every_worker(scraped):
    """Counter increases equal what was sent: /metrics sums all workers, whichever answers."""
    stack, totals, before, sent = scraped
    expected = [sent["predictions"], sent["predict_requests"], sent["out_of_range"]]
    for expr, start, increase in zip(totals, before, expected):
        wait_for(lambda: scalar(stack, expr) == start + increase, 15, f"{expr} to grow by exactly {increase} from {start}")


def test_every_dashboard_query_returns_data(scraped):
    stack, totals, before, sent = scraped
    wait_for(lambda: scalar(stack, totals[0]) == before[0] + sent["predictions"], 15, "the traffic to be scraped")
    time.sleep(2)  # two more scrapes: gauges and node exporter rates settle
    results = check_dashboards.evaluate(stack.prometheus_url)
    listed = NEEDS_ERRORS | NEEDS_NGINX
    assert listed <= {r.panel for r in results}, "NEEDS_* lists a panel that no longer exists"
    failed = [f"{r.dashboard} / {r.panel}: {r.error}" for r in results if r.error]
    assert not failed, "dashboard queries Prometheus refused:\n" + "\n".join(failed)
    empty = [f"{r.dashboard} / {r.panel}: {r.expr}" for r in results if not r.has_data and r.panel not in listed]
    with_data = sum(r.has_data for r in results)
    print(f"{with_data} of {len(results)} dashboard queries return data ({100 * with_data / len(results):.0f} %)")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_unknown_paths_do_not_become_series(scraped, live_server):
    """BentoML labels requests with the raw path; prometheus.yml drops the paths that are not routes."""
    stack, totals, before, sent = scraped
    wait_for(lambda: scalar(stack, totals[0]) == before[0] + sent["predictions"], 15, "the traffic to be scraped")
    exposed = requests.get(f"{live_server}/metrics", timeout=10).text
    for path in SCANNED_PATHS:
        assert f'endpoint="{path}"' in exposed  # the service does expose them...
        assert not query(stack, f'{{job="xgb-service",endpoint="{path}"}}'), path  # ...Prometheus keeps none
    assert query(stack, 'bentoml_service_request_total{job="xgb-service",endpoint="/predict"}')


def test_model_metrics_reach_prometheus(scraped):
    stack, *_ = scraped
    priors = {r["metric"]["predicted_class"]: float(r["value"][1]) for r in query(stack, 'xgb_class_prior{job="xgb-service"}')}
    assert set(priors) == {"0", "1", "2", "3", "4"} and math.isclose(sum(priors.values()), 1, abs_tol=0.01)
    versions = query(stack, 'xgb_model_info{job="xgb-service"}')
    assert len(versions) == 1 and versions[0]["metric"]["model_version"]
    assert query(stack, 'xgb_input_out_of_range_total{job="xgb-service",feature="feat1"}')


def test_service_down_alert_fires_and_reaches_the_webhook(server_factory, tmp_path):
    """A dedicated service is stopped; the real XGBServiceDown expression fires (with `for:`
    shortened to 2 s) and Alertmanager (group waits shortened) delivers it to the webhook."""
    rules = yaml.safe_load((localstack.MONITORING_DIR / "rules" / "service.yml").read_text())
    service_down = next(r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "XGBServiceDown")
    service_down["for"] = "2s"
    (tmp_path / "service.yml").write_text(yaml.safe_dump(rules))
    ports = new_ports()
    alertmanager = localstack.local_alertmanager_config(ports)
    for route in [alertmanager["route"], *alertmanager["route"]["routes"]]:
        route["group_wait"] = route["group_interval"] = "1s"
    received: list[dict] = []

    # A server of its own (server_factory gives it its own BENTOML_HOME): stopping it must not touch the shared live server.
    server = server_factory(workers=1)
    stack = localstack.LocalStack(
        tmp_path / "stack", f"127.0.0.1:{server.port}", ports, interval="1s",
        rule_files=[tmp_path / "service.yml"], alertmanager_config=alertmanager, alert_sink=received.append,
    )  # fmt: skip

    def service_down_alerts() -> list[dict]:
        alerts = requests.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "XGBServiceDown"]

    with stack:
        # Until its first scrape the target has no `up` series, which absent() reports: wait that out.
        wait_for(lambda: scalar(stack, 'up{job="xgb-service"}') == 1 and not service_down_alerts(), 30, "a healthy scrape")
        server.stop()
        stopped = time.monotonic()
        print("\nservice stopped, waiting for XGBServiceDown", flush=True)
        firing = wait_for(lambda: [a for a in service_down_alerts() if a["state"] == "firing"], 30, "XGBServiceDown to fire")
        assert firing[0]["labels"]["instance"] == f"127.0.0.1:{server.port}"
        delivered = wait_for(
            lambda: [a for p in received for a in p["alerts"]
                     if a["labels"]["alertname"] == "XGBServiceDown" and a["status"] == "firing"
                     and a["labels"].get("instance") == f"127.0.0.1:{server.port}"],
            30, "Alertmanager to deliver XGBServiceDown to the webhook",
        )  # fmt: skip
        print(f"delivered {time.monotonic() - stopped:.1f} s after the stop: {delivered[0]['annotations']['summary']}")
        assert delivered[0]["labels"]["severity"] == "critical"
        base = yaml.safe_load(localstack.PROMETHEUS_CONFIG.read_text())["global"]["external_labels"]["runbook_base"]
        assert delivered[0]["annotations"]["runbook_url"] == f"{base}#xgbservicedown"


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
