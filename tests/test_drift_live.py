"""Live feature drift: a real Prometheus (the same local stack as `make monitor`) scrapes a real
`bentoml serve` and evaluates the real drift rules (monitoring/rules/drift.yml) over a 5-minute window
instead of 1 hour, every second. The service is fed records from the training distribution,
except that one continuous feature is shifted far above its training range: that feature's PSI
crosses 0.2 and XGBFeatureDrift fires for it alone, while every other feature's PSI stays below 0.1.
(The 1-hour rules themselves are checked by promtool: monitoring/tests/drift.yml.)
"""

from __future__ import annotations

import numpy as np
import requests
import yaml
from test_monitoring_live import new_ports, query, scalar, wait_for

from model_store import drift, load_bundle
from model_store.dataset import sample_records
from monitoring import localstack

DRIFT_RULES = localstack.MONITORING_DIR / "rules" / "drift.yml"
RECORDS, BATCH = 2000, 500
WINDOW = "5m"


def test_a_shifted_feature_crosses_psi_0_2_while_every_other_stays_below_0_1(server_factory, tmp_path):
    server = server_factory(workers=2)
    reference = load_bundle().metadata[drift.REFERENCE_KEY]
    shifted = next(f for f in reference["features"] if f["kind"] == "continuous")
    lo, hi = shifted["edges"][0], shifted["edges"][-1]
    rules = DRIFT_RULES.read_text().replace("[1h]", f"[{WINDOW}]")
    assert rules != DRIFT_RULES.read_text(), "the drift rules no longer use a [1h] window: update this test"
    variant = yaml.safe_load(rules)
    for rule in variant["groups"][0]["rules"]:
        if rule.get("alert") == "XGBFeatureDrift":
            rule["for"] = "1s"
    (tmp_path / "drift.yml").write_text(yaml.safe_dump(variant))
    stack = localstack.LocalStack(tmp_path / "stack", f"127.0.0.1:{server.port}", new_ports(), interval="1s",
                                  rule_files=[tmp_path / "drift.yml"])  # fmt: skip
    with stack:
        wait_for(lambda: scalar(stack, 'up{job="xgb-service"}') == 1, 30, "the service to be scraped")
        records = sample_records(np.random.default_rng(31), RECORDS)
        for record in records:
            record[shifted["name"]] = hi + 10 * (hi - lo)  # far above anything in training
        for i in range(0, RECORDS, BATCH):
            response = requests.post(f"{server.url}/predict_batch", json={"instances": records[i : i + BATCH]}, timeout=60)
            assert response.status_code == 200, response.text[:300]
        counted = f'xgb:feature_records:1h{{feature="{shifted["name"]}"}}'
        wait_for(lambda: (scalar(stack, counted) or 0) >= RECORDS, 30, "every record to be counted, scraped and recorded")
        wait_for(lambda: len(query(stack, "xgb:feature_psi:1h")) == len(reference["features"]), 10, "a PSI for every feature")
        psi = {r["metric"]["feature"]: float(r["value"][1]) for r in query(stack, "xgb:feature_psi:1h")}
        others = {name: value for name, value in psi.items() if name != shifted["name"]}
        print(f"\nPSI over {RECORDS} records: {shifted['name']} (shifted) {psi[shifted['name']]:.2f}; the others "
              f"max {max(others.values()):.4f} ({max(others, key=others.get)}), median {np.median(list(others.values())):.4f}")
        assert psi[shifted["name"]] > 0.2
        assert max(others.values()) < 0.1, others
        firing = wait_for(lambda: [a for a in requests.get(f"{stack.prometheus_url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
                                   if a["labels"]["alertname"] == "XGBFeatureDrift" and a["state"] == "firing"],
                          30, "XGBFeatureDrift to fire")  # fmt: skip
        assert {a["labels"]["feature"] for a in firing} == {shifted["name"]}
