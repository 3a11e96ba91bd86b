"""Grafana dashboards as code: plain Python building Grafana's JSON model.

    python -m monitoring.dashboards          # (re)write monitoring/grafana/dashboards/*.json

The JSON files are committed (Grafana provisioning loads them: grafana/provisioning/); a test
checks that they match this generator, and the live test runs every query against a real
Prometheus scraping a real service.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

DASHBOARD_DIR = Path(__file__).resolve().parent / "grafana" / "dashboards"
# Panels use the dashboard's datasource variable, whose default is the provisioned datasource
# (grafana/provisioning/datasources/prometheus.yml): pick another Prometheus without editing panels.
PROVISIONED_DATASOURCE_UID = "prometheus"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
# $instance: the dashboard's instance variable (All = every instance). Fleet-wide SLO series are
# recorded without an instance label and are not filtered by it.
SVC = 'job="xgb-service",instance=~"$instance"'
NODE = 'job="node",instance=~"$instance"'
# BentoML's internal batched API: /predict feeds it, it is not client traffic
CLIENT_ENDPOINTS = f'{SVC},endpoint!="/predict_rows"'
REQUESTS = "bentoml_service_request_total"
DURATION = "bentoml_service_request_duration_seconds"
BATCH = "bentoml_service_adaptive_batch_size"
ROLLOUT_PREDICTIONS = "xgb_rollout_predictions_total"
MODEL_LATENCY = "xgb_model_latency_seconds"
PREDICT_OK = f'{SVC},endpoint="/predict",http_response_code="200"'
BATCHING = f'{SVC},method_name="predict_rows"'


@dataclasses.dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | heatmap | bargauge (the latest value of each series, ranked)
    description: str = ""
    width: int = 12
    threshold: float | None = None  # drawn as a red line / turns a stat red
    show_legend_text: bool = False  # stat panels: show the legend (e.g. a version) instead of the value
    up_down: bool = False  # a 0/1 "up" stat: red DOWN at 0, green UP at 1


@dataclasses.dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclasses.dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    rows: tuple[Row, ...]
    instance_job: str  # the $instance variable lists this job's instances
    tags: tuple[str, ...] = ("xgb-service",)

    def queries(self) -> list[tuple[str, Query]]:
        """(panel title, query) for every query on the dashboard."""
        return [(p.title, q) for row in self.rows for p in row.panels for q in p.queries]


def _quantiles(metric: str, selector: str, quantiles: tuple[float, ...], by: tuple[str, ...] = ()) -> tuple[Query, ...]:
    """One series per quantile (and per combination of the `by` labels, named in the legend)."""
    labels = ", ".join(("le", *by))
    legend = "".join(f" {{{{{label}}}}}" for label in by)
    return tuple(
        Query(f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{{{selector}}}[{RATE}])))", f"p{round(q * 100)}{legend}")
        for q in quantiles
    )


def _ratio_percent(numerator_selector: str, denominator_selector: str) -> str:
    # `or vector(0)`: no matching requests means 0%, not "no data"
    return (
        f"100 * (sum(rate({REQUESTS}{{{numerator_selector}}}[{RATE}])) or vector(0))"
        f" / sum(rate({REQUESTS}{{{denominator_selector}}}[{RATE}]))"
    )


PREDICT_ENDPOINTS = f'{SVC},endpoint=~"/predict|/predict_batch"'
SLO_WINDOWS = ("5m", "1h", "6h", "3d")  # of the recorded 5m, 30m, 1h, 6h, 3d (monitoring/rules/slo.yml)


def _slo_ratios(slo: str) -> tuple[Query, ...]:
    return tuple(Query(f'slo:sli_error:ratio_rate{w}{{slo="{slo}"}}', w) for w in SLO_WINDOWS)


# A candidate model next to the primary (serving/rollout.py); empty without XGB_CANDIDATE_TAG.
ROLLOUT = Row("Model rollout: primary and candidate side by side (XGB_CANDIDATE_TAG)", (
    Panel("Loaded models", (
        Query(f"max by (role, model_version, mode) (xgb_rollout_info{{{SVC}}})", "{{role}} {{model_version}} ({{mode}})"),
    ), kind="stat", show_legend_text=True, width=6,
       description="The primary and the candidate, and what the candidate does: shadow or canary."),
    Panel("Predictions per second by version", (
        Query(f"sum by (role, model_version) (rate({ROLLOUT_PREDICTIONS}{{{SVC}}}[{RATE}]))", "{{role}} {{model_version}}"),
    ), unit="ops", width=9,
       description="shadow: the candidate scores every record the primary answers; canary: its share of the answers."),
    Panel("Model call p50 / p99 by version", _quantiles(MODEL_LATENCY, SVC, (0.5, 0.99), by=("role", "model_version")),
          unit="s", width=9, description="One model call: a batch of records (the candidate's shadow batches are drained backlogs)."),
    Panel("Predicted class share by version", (
        Query(f"sum by (role, model_version, predicted_class) (rate({ROLLOUT_PREDICTIONS}{{{SVC}}}[{RATE}]))"
              f" / on (role, model_version) group_left () sum by (role, model_version) (rate({ROLLOUT_PREDICTIONS}{{{SVC}}}[{RATE}]))",
              "{{role}} class {{predicted_class}}"),
    ), unit="percentunit", description="The same records in shadow mode: a class the two versions share differently is where they disagree."),
    Panel("Shadow agreement of the predicted class", (
        Query(f"sum(rate(xgb_shadow_agreed_total{{{SVC}}}[{RATE}])) / sum(rate(xgb_shadow_records_total{{{SVC}}}[{RATE}]))", "agreement"),
        Query(f"max(xgb_shadow_min_agreement{{{SVC}}})", "alert level"),
    ), unit="percentunit", width=6,
       description="Share of shadow records both versions give the same class. Alert XGBShadowDisagreement: under the alert level (XGB_SHADOW_MIN_AGREEMENT)."),
    Panel("Shadow: mean absolute difference", (
        Query(f"sum(rate(xgb_shadow_abs_difference_sum{{{SVC}}}[{RATE}])) / sum(rate(xgb_shadow_abs_difference_count{{{SVC}}}[{RATE}]))",
              "mean |Δ|"),
    ), width=6, description="Per record, the mean absolute difference of the class probabilities (regression: of the prediction)."),
))  # fmt: skip

SERVICE = Dashboard(
    uid="xgb-service",
    title="XGBoost service",
    instance_job="xgb-service",
    rows=(
        Row("SLOs (monitoring/slo.md)", (
            Panel("Availability: failed share of prediction requests by window", _slo_ratios("availability"),
                  unit="percentunit", threshold=0.001,
                  description="SLO 99.9%: a 5xx or a shed 503 is a failure. Pages at 14.4x the budget (1h and 5m) "
                              "and 6x (6h and 30m); a ticket at 1x (3d and 6h)."),
            Panel("Latency: share of /predict over 50 ms by window", _slo_ratios("latency"),
                  unit="percentunit", threshold=0.01,
                  description="SLO 99% of successful /predict under 50 ms. Same burn-rate alerts as availability."),
            Panel("Error budget burn rate (1h window)", (
                Query('slo:sli_error:ratio_rate1h{slo="availability"} / 0.001', "availability"),
                Query('slo:sli_error:ratio_rate1h{slo="latency"} / 0.01', "latency"),
            ), threshold=14.4, description="1 spends the 30-day budget in 30 days; 14.4 pages."),
        )),
        Row("Traffic and errors", (
            Panel("Request rate by endpoint and status", (
                Query(f"sum by (endpoint, http_response_code) (rate({REQUESTS}{{{CLIENT_ENDPOINTS}}}[{RATE}]))",
                      "{{endpoint}} {{http_response_code}}"),
            ), unit="reqps"),
            Panel("Error % (5xx except overload 503)", (
                Query(_ratio_percent(f'{PREDICT_ENDPOINTS},http_response_code=~"5..",http_response_code!="503"', PREDICT_ENDPOINTS),
                      "5xx %"),
            ), unit="percent", threshold=0.1, description="Server errors of the prediction routes; with shed 503s they spend the availability budget (0.1%)."),
            Panel("Overload: shed requests % (503 + Retry-After)", (
                Query(_ratio_percent(f'{PREDICT_ENDPOINTS},http_response_code="503"', PREDICT_ENDPOINTS), "shed %"),
            ), unit="percent", threshold=1, description="Alert XGBOverloaded: over 1% for 5 minutes. The service sheds with 503, never 429."),
            Panel("Server errors and shed requests by endpoint", (
                Query(f'sum by (endpoint, http_response_code) (rate({REQUESTS}{{{CLIENT_ENDPOINTS},http_response_code=~"5.."}}[{RATE}]))',
                      "{{endpoint}} {{http_response_code}}"),
            ), unit="reqps"),
            Panel("Rejected requests by reason", (
                Query(f"sum by (reason) (rate(xgb_rejected_requests_total{{{SVC}}}[{RATE}]))", "{{reason}}"),
            ), unit="reqps", description="Refused before the model: invalid input, too large, unauthorized, overloaded."),
            Panel("In-flight requests", (
                Query(f"sum by (endpoint) (bentoml_service_request_in_progress{{{CLIENT_ENDPOINTS}}})", "{{endpoint}}"),
            )),
        )),
        Row("Latency", (
            Panel("/predict latency p50 / p95 / p99", _quantiles(DURATION, PREDICT_OK, (0.5, 0.95, 0.99)), unit="s",
                  threshold=0.05, description="Buckets from 0.25 ms (serving/metrics.py): p50 and p95 are measured, not guessed inside one bucket."),
            Panel("p99 latency by endpoint", (
                Query(f'histogram_quantile(0.99, sum by (le, endpoint) (rate({DURATION}_bucket{{{CLIENT_ENDPOINTS},http_response_code="200"}}[{RATE}])))',
                      "{{endpoint}}"),
            ), unit="s"),
            Panel("/predict requests within 50 ms", (
                Query(f'100 * sum(rate({DURATION}_bucket{{{PREDICT_OK},le="0.05"}}[{RATE}])) / sum(rate({DURATION}_count{{{PREDICT_OK}}}[{RATE}]))',
                      "within 50 ms %"),
            ), unit="percent", kind="stat", width=6),
            Panel("Service up", (Query(f"up{{{SVC}}}", "{{instance}}"),), kind="stat", width=6, up_down=True),
        )),
        Row("Adaptive batching (max batch size 128)", (
            Panel("Adaptive batch size distribution", (
                Query(f"sum by (le) (rate({BATCH}_bucket{{{BATCHING}}}[{RATE}]))", "{{le}}"),
            ), kind="heatmap", unit="ops",
               description="Model calls per second by records per call. A rate, not increase() over the rate interval: "
                           "those windows overlap from one point to the next and would count each call several times."),
            Panel("Batch size: mean and p99", (
                Query(f"sum(rate({BATCH}_sum{{{BATCHING}}}[{RATE}])) / sum(rate({BATCH}_count{{{BATCHING}}}[{RATE}]))", "mean"),
                *_quantiles(BATCH, BATCHING, (0.99,)),
            ), threshold=96, description="Alert XGBBatchingSaturated: mean over 96 for 10 minutes."),
            Panel("Model calls per second by worker", (
                Query(f"sum by (worker_index) (rate({BATCH}_count{{{BATCHING}}}[{RATE}]))", "worker {{worker_index}}"),
            ), unit="ops"),
        )),
        Row("Model", (
            Panel("Model version", (
                Query(f"max by (model_tag, model_version) (xgb_model_info{{{SVC}}})", "{{model_version}}"),
            ), kind="stat", show_legend_text=True, description="The model tag being served (xgb_model_info)."),
            Panel("Predictions per second by class", (
                Query(f"sum by (predicted_class) (rate(xgb_predictions_total{{{SVC}}}[{RATE}]))", "class {{predicted_class}}"),
            ), unit="ops"),
            Panel("Predicted class share (last hour) vs held-out predictions", (
                Query(f"sum by (predicted_class) (increase(xgb_predictions_total{{{SVC}}}[1h]))"
                      f" / scalar(sum(increase(xgb_predictions_total{{{SVC}}}[1h])))", "class {{predicted_class}}"),
                Query(f"max by (predicted_class) (xgb_class_reference_ratio{{{SVC}}})", "held-out {{predicted_class}}"),
            ), unit="percentunit",
               description="Alert XGBPredictionDrift: a share 15 points away from the model's share of that class on its held-out data."),
            Panel("Prediction confidence p10 / p50 / mean", (
                *_quantiles("xgb_prediction_confidence", SVC, (0.1, 0.5)),
                Query(f"sum(rate(xgb_prediction_confidence_sum{{{SVC}}}[{RATE}]))"
                      f" / sum(rate(xgb_prediction_confidence_count{{{SVC}}}[{RATE}]))", "mean"),
            ), unit="percentunit"),
            Panel("Confidence distribution", (
                Query(f"sum by (le) (rate(xgb_prediction_confidence_bucket{{{SVC}}}[{RATE}]))", "{{le}}"),
            ), kind="heatmap", unit="ops", description="Predictions per second by confidence."),
            Panel("Out-of-range share of records by feature", (
                Query(f"sum by (feature) (rate(xgb_input_out_of_range_total{{{SVC}}}[{RATE}]))"
                      f" / on() group_left() sum(rate(xgb_input_records_checked_total{{{SVC}}}[{RATE}]))", "{{feature}}"),
            ), unit="percentunit", threshold=0.05,
               description="Values outside the schema's range per record checked (alert XGBInputOutOfRange: over 5% for 10 minutes)."),
        )),
        Row("Feature drift (against the training data stored with the model)", (
            Panel("PSI per feature, last hour", (Query("xgb:feature_psi:1h", "{{feature}}"),), threshold=0.2,
                  description="Population Stability Index of each feature's values over the last hour against its training "
                              "distribution (monitoring/rules/drift.yml), whole service: < 0.1 stable, > 0.2 drifted. "
                              "Alert XGBFeatureDrift: above 0.2 with at least 500 records, for 15 minutes."),
            Panel("Top drifting features", (Query("topk(10, xgb:feature_psi:1h)", "{{feature}}"),), kind="bargauge",
                  threshold=0.2, description="The 10 features with the highest PSI now."),
            Panel("Records outside the training range or missing, by feature", (
                Query(f'sum by (feature) (rate(xgb_feature_bin_total{{{SVC},bin=~"[<>].*|[(](other|missing)[)]"}}[{RATE}]))'
                      f' > 0', "{{feature}}"),
            ), unit="ops", description="Values in the bins training never (or rarely) had: below its minimum, above its "
                                       "maximum, an unknown category, missing."),
        )),
        ROLLOUT,
        Row("Resources and workers", (
            Panel("Service CPU (cores, all workers)", (
                Query(f"sum(rate(xgb_process_cpu_seconds_total{{{SVC}}}[{RATE}]))", "cores"),
            )),
            Panel("Service memory (resident, live workers)", (
                Query(f"sum(xgb_process_resident_memory_bytes{{{SVC}}})", "resident"),
            ), unit="bytes", threshold=1.6e9),
            Panel("Worker restarts (last 15 minutes)", (
                Query(f"sum by (instance) (increase(xgb_worker_starts_total{{{SVC}}}[15m]))", "{{instance}}"),
            ), threshold=1, description="Alerts XGBWorkerRestarted (1) and XGBWorkerCrashLooping (3 in 15 minutes)."),
            Panel("Host CPU busy", (
                Query(f'100 * (1 - avg by (instance) (rate(node_cpu_seconds_total{{job="node",mode="idle"}}[{RATE}])))',
                      "{{instance}}"),
            ), unit="percent", threshold=90),
            Panel("Host memory available", (
                Query('100 * node_memory_MemAvailable_bytes{job="node"} / node_memory_MemTotal_bytes{job="node"}',
                      "{{instance}}"),
            ), unit="percent"),
        )),
    ),
)  # fmt: skip

EDGE = Dashboard(
    uid="xgb-edge",
    title="XGBoost service: edge and host",
    instance_job="node",
    rows=(
        Row("nginx (docker-compose stack)", (
            Panel("nginx up", (Query('nginx_up{job="nginx"}', "{{instance}}"),), kind="stat", width=6, up_down=True,
                  description="From nginx-exporter, which stays up when nginx is down (alert NginxDown)."),
            Panel("nginx requests per second", (
                Query(f'sum(rate(nginx_http_requests_total{{job="nginx"}}[{RATE}]))', "requests"),
            ), unit="reqps", width=9),
            Panel("nginx connections", (
                Query('nginx_connections_active{job="nginx"}', "active"),
                Query('nginx_connections_waiting{job="nginx"}', "waiting"),
            ), width=9),
        )),
        Row("Host (node exporter)", (
            Panel("Load average", (
                Query(f'node_load1{{{NODE}}}', "1m {{instance}}"),
                Query(f'node_load5{{{NODE}}}', "5m {{instance}}"),
            )),
            Panel("CPU by mode", (
                Query(f'sum by (mode) (rate(node_cpu_seconds_total{{{NODE},mode!="idle"}}[{RATE}]))', "{{mode}}"),
            ), description="Cores busy per mode."),
            Panel("Network traffic", (
                Query(f'sum by (instance) (rate(node_network_receive_bytes_total{{{NODE},device!="lo"}}[{RATE}]))', "in {{instance}}"),
                Query(f'sum by (instance) (rate(node_network_transmit_bytes_total{{{NODE},device!="lo"}}[{RATE}]))', "out {{instance}}"),
            ), unit="Bps", description="The host's interfaces: node exporter runs in the host's network namespace."),
            Panel("Scrape targets up", (Query("up", "{{job}} {{instance}}"),), kind="stat", up_down=True),
        )),
    ),
)  # fmt: skip

DASHBOARDS = (SERVICE, EDGE)


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    targets = []
    for ref, query in zip("ABCDEFGH", panel.queries):
        target = {"refId": ref, "datasource": DATASOURCE, "expr": query.expr, "legendFormat": query.legend, "range": True}
        if panel.kind == "bargauge":  # a ranking of now, not of every moment in the time range
            target.update(range=False, instant=True)
        if panel.kind == "heatmap":
            target["format"] = "heatmap"
        targets.append(target)
    steps = [{"color": "green", "value": None}]
    if panel.threshold is not None:
        steps.append({"color": "red", "value": panel.threshold})
    if panel.up_down:
        steps = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
    defaults: dict = {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if panel.up_down:
        defaults["mappings"] = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}}}]
    if panel.kind == "timeseries" and panel.threshold is not None:
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    options: dict = {}
    if panel.kind == "stat":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "textMode": "name" if panel.show_legend_text else "auto", "colorMode": "background"}
    elif panel.kind == "heatmap":
        # The series are cumulative `le` buckets: format "heatmap" makes Grafana subtract neighbours.
        options = {"calculate": False, "yAxis": {"axisPlacement": "left"}, "color": {"mode": "scheme", "scheme": "Oranges"},
                   "cellValues": {"unit": panel.unit}}
    elif panel.kind == "bargauge":
        options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                   "orientation": "horizontal", "displayMode": "gradient", "showUnfilled": True}
    elif panel.kind == "timeseries":
        options = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}, "tooltip": {"mode": "multi"}}
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": targets,
    }


def _variables(dashboard: Dashboard) -> list[dict]:
    """$datasource (any Prometheus, the provisioned one by default) and $instance (All by default)."""
    instances = f'label_values(up{{job="{dashboard.instance_job}"}}, instance)'
    return [
        {"type": "datasource", "name": "datasource", "label": "Data source", "query": "prometheus", "hide": 0,
         "current": {"text": "Prometheus", "value": PROVISIONED_DATASOURCE_UID}, "options": [], "refresh": 1, "regex": ""},
        {"type": "query", "name": "instance", "label": "Instance", "datasource": DATASOURCE, "hide": 0,
         "query": {"query": instances, "refId": "instance"}, "definition": instances, "refresh": 2, "sort": 1,
         "includeAll": True, "multi": True, "allValue": ".*", "current": {"text": "All", "value": "$__all"}, "options": []},
    ]  # fmt: skip


def to_json(dashboard: Dashboard) -> dict:
    """Grafana's dashboard JSON model (schema 39, Grafana 10/11)."""
    panels = []
    y = 0
    for row in dashboard.rows:
        panels.append({"id": len(panels) + 1, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})  # fmt: skip
        y += 1
        x = 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, len(panels) + 1, x, y))
            x += panel.width
        y += 8
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "tags": list(dashboard.tags),
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "templating": {"list": _variables(dashboard)},
        "panels": panels,
    }


def render(dashboard: Dashboard) -> str:
    return json.dumps(to_json(dashboard), indent=2) + "\n"


def path_of(dashboard: Dashboard) -> Path:
    return DASHBOARD_DIR / f"{dashboard.uid}.json"


def main() -> None:
    DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
    for dashboard in DASHBOARDS:
        path_of(dashboard).write_text(render(dashboard))
        print(f"wrote {path_of(dashboard)} ({len(dashboard.queries())} queries)", file=sys.stderr)


if __name__ == "__main__":
    main()
