"""The ADOT collector's scrape half against a live `bentoml serve`: its prometheus receiver's
scrape_configs (Prometheus's own schema) run by a real Prometheus (Debian's), with the service's
rules loaded as in AMP. No collector build can be installed here (see test_infra_observability.py).

Same job, path and relabeling as the committed collector config; only the port (a free one) and the
interval (1 s, to be quick) differ. Prints the number of series one task sends to AMP per scrape,
the figure docs/deployment.md's cost table is computed from.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "infra_pulumi"))

from loadtest.bench_servers import free_port  # noqa: E402
from ml_api_infra import collector  # noqa: E402
from ml_api_infra.settings import CONTAINER_PORT  # noqa: E402
from model_store.dataset import sample_records  # noqa: E402
from tests.test_infra_observability import grouping_labels, locally_loaded_rules  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS = "/usr/bin/prometheus"


def query(url: str, expr: str) -> list[dict]:
    answer = requests.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def scraped(server_factory, tmp_path_factory):
    server = server_factory()
    records = sample_records(np.random.default_rng(3), 64)
    with requests.Session() as session:
        for record in records:
            assert session.post(f"{server.url}/predict", json=record, timeout=30).status_code == 200
        assert session.post(f"{server.url}/predict_batch", json={"instances": records}, timeout=30).status_code == 200
        assert session.post(f"{server.url}/explain", json=records[0], timeout=30).status_code == 200
        assert session.post(f"{server.url}/predict", data=b"{not json", timeout=30).status_code == 400
        assert session.get(f"{server.url}/wp-login.php", timeout=30).status_code == 404
    config = yaml.safe_load(collector.committed_config())
    [scrape] = config["receivers"]["prometheus"]["config"]["scrape_configs"]
    assert scrape["static_configs"] == [{"targets": [f"localhost:{CONTAINER_PORT}"]}]
    scrape = {**scrape, "scrape_interval": "1s", "static_configs": [{"targets": [f"localhost:{server.port}"]}]}
    directory = tmp_path_factory.mktemp("collector-scrape")
    (directory / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"evaluation_interval": "1s"},
        "rule_files": [str(p) for p in sorted((REPO / "monitoring" / "rules").glob("*.yml"))],
        "scrape_configs": [scrape]}))
    port = free_port()
    log = (directory / "prometheus.log").open("wb")
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}",
                             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and _ok(url), 60, "Prometheus to start")
        wait_for(lambda: query(url, 'up{job="xgb-service"} == 1'), 60, "the first scrape")
        time.sleep(5)  # a few scrapes and rule evaluations
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _ok(url: str) -> bool:
    try:
        return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_the_collectors_scrape_config_reaches_the_service_and_drops_unknown_paths(scraped):
    [up] = query(scraped, 'up{job="xgb-service"}')
    assert up["value"][1] == "1"
    endpoints = {r["metric"]["endpoint"] for r in query(scraped, 'bentoml_service_request_total{job="xgb-service"}')}
    assert "/predict" in endpoints and "/predict_batch" in endpoints
    assert "/wp-login.php" not in endpoints, "metric_relabel_configs did not drop a scanner's path"
    series = int(float(query(scraped, 'count({job="xgb-service"})')[0]["value"][1]))
    print(f"\nseries per task per scrape (what the sidecar remote-writes): {series}")
    assert series > 100


def test_every_rule_evaluates_and_groups_by_labels_the_scraped_series_have(scraped):
    groups = requests.get(f"{scraped}/api/v1/rules", timeout=10).json()["data"]["groups"]
    unhealthy = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, unhealthy
    assert sum(len(g["rules"]) for g in groups) == len(locally_loaded_rules())
    labels = set(requests.get(f"{scraped}/api/v1/labels", timeout=10).json()["data"])
    names = set(requests.get(f"{scraped}/api/v1/label/__name__/values", timeout=10).json()["data"])
    checked = 0
    for key, rule in locally_loaded_rules().items():
        selected = set(re.findall(r'(\w+)\{job="xgb-service"', rule["expr"]))
        if selected and selected <= names:  # (the shadow metrics exist only with a candidate model)
            checked += 1
            missing = grouping_labels(rule["expr"]) - labels
            assert not missing, f"{key}: groups by {missing}, which no scraped series has"
    assert checked > 30, checked
    recorded = query(scraped, 'sum by (job) (rate(bentoml_service_request_total{job="xgb-service"}[1m]))')
    assert recorded and json.dumps(recorded)
