"""Monitoring configs checked by the real tools (promtool, amtool) and for consistency with each
other: alert rules and their unit tests, Alertmanager routing, the dashboards generator, the local
stack's derived configs and the docker-compose stack (which cannot run here: checked structurally).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
import yaml
from testkit.servers import free_port
from monitoring import alert_logger, check_dashboards, dashboards, localstack

MON = Path(localstack.MONITORING_DIR)
RULE_TESTS = sorted((MON / "tests").glob("*.yml"))
PORTS = localstack.Ports(prometheus=19090, alertmanager=19093, node_exporter=19100, alert_logger=15001)


def run_tool(*argv: str, cwd: Path = MON, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    if shutil.which(argv[0]) is None:
        pytest.fail(f"{argv[0]} not installed: run `make sysdeps` (APT_PACKAGES in mk/monitor.mk)")
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"{' '.join(result.args)} failed:\n{result.stdout}\n{result.stderr}"


RULE_FILES = localstack.rule_paths()


def all_rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict]:
    return [rule for rule in all_rules() if "alert" in rule]


# --- Prometheus: config, rules, rule unit tests ----------------------------------------------


def test_promtool_check_config_docker_and_local(tmp_path):
    assert_ok(run_tool("promtool", "check", "config", "prometheus.yml"))
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(localstack.local_prometheus_config("127.0.0.1:3000", PORTS)))
    assert_ok(run_tool("promtool", "check", "config", str(local)))


def test_promtool_check_rules():
    assert {p.name for p in RULE_FILES} >= {"service.yml"}
    result = run_tool("promtool", "check", "rules", *map(str, RULE_FILES))
    assert_ok(result)
    for path in RULE_FILES:
        rules = sum(len(group["rules"]) for group in yaml.safe_load(path.read_text())["groups"])
        assert f"Checking {path}\n  SUCCESS: {rules} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass():
    assert RULE_TESTS, "no rule unit tests in monitoring/tests/"
    assert_ok(run_tool("promtool", "test", "rules", *(p.name for p in RULE_TESTS), cwd=MON / "tests"))


# A rule unit test suite must notice a broken rule: each mutation here has to fail it.
MUTATIONS = {
    "drift threshold": ("> 0.15", "> 0.5"),
    "no-traffic ignores never-seen series": ("or on() vector(0)) == 0", ") == 0"),
    "service down without absent()": (' or absent(up{job="xgb-service"})', ""),
    "batching threshold": ("> 96", "> 128"),
    "shed 503s are not bad events": ('http_response_code=~"5.."}[5m]', 'http_response_code=~"5..",http_response_code!="503"}[5m]'),
    "4xx are bad events": ('http_response_code=~"5.."}[1h]', 'http_response_code=~"[45].."}[1h]'),
    "fast burn without its short window": ('slo:sli_error:ratio_rate5m{slo="availability"} > 14.4 * 0.001', 'slo:sli_error:ratio_rate5m{slo="availability"} > -1'),
    "fast burn without a minimum volume": ('slo:sli_requests:rate1h{slo="availability"} * 3600 >= 1000', 'slo:sli_requests:rate1h{slo="availability"} * 3600 >= 0'),
    "slow burn factor": ('slo:sli_error:ratio_rate6h{slo="latency"} > 6 * 0.01', 'slo:sli_error:ratio_rate6h{slo="latency"} > 10 * 0.01'),
    "latency threshold": ('le="0.05"}[1h]', 'le="0.1"}[1h]'),
    "overload counts 500s": ('http_response_code="503"}[5m]', 'http_response_code=~"5.."}[5m]'),
    "restarts without the first-sample rule": ("[15m])) >= 1", "[15m])) >= 0"),
    "nginx down on the exporter's up": ('nginx_up{job="nginx"} == 0', 'up{job="nginx"} == 0'),
    "rule failures of one group hide in the sum": ("sum by (job, instance, rule_group) (increase(prometheus_rule_evaluation_failures_total", "sum by (job, instance) (increase(prometheus_rule_evaluation_failures_total"),
    "PSI threshold": ("xgb:feature_psi:1h > 0.2", "xgb:feature_psi:1h > 2"),
    "PSI ignores the record count": ("xgb:feature_records:1h >= 500", "xgb:feature_records:1h >= 0"),
    "PSI leaves out a bin no record reached": ("or on(feature, bin)\n          (0 * xgb:feature_reference_ratio", "and on(feature, bin)\n          (0 * xgb:feature_reference_ratio"),
    "PSI of one instance": ("sum by (feature, bin) (increase(", "max by (feature, bin) (increase("),
    "class drift against the label prior": ("on(predicted_class) max by (predicted_class) (xgb_class_reference_ratio", "on(predicted_class) max by (predicted_class) (xgb_class_prior"),
    "shadow disagreement without volume": (") >= 1000", ") >= 100"),
    "shadow disagreement at a fixed level": ('< on() group_left() max(xgb_shadow_min_agreement{job="xgb-service"})', "< 0.9"),
    "shadow disagreement with another job's level": ('max(xgb_shadow_min_agreement{job="xgb-service"})', "max(xgb_shadow_min_agreement)"),
}


def rule_tests_loading(rule_file: Path) -> list[Path]:
    """The rule unit test files that load `rule_file`, the one named after it first, then the
    shorter ones: a mutation is caught as soon as one of them fails."""
    def loads(test_file: Path) -> bool:
        globs = yaml.safe_load(test_file.read_text())["rule_files"]
        return any(rule_file.resolve() in {p.resolve() for p in test_file.parent.glob(g)} for g in globs)

    return sorted((t for t in RULE_TESTS if loads(t)), key=lambda t: (t.stem != rule_file.stem, t.stat().st_size))


@pytest.mark.parametrize("name", MUTATIONS)
def test_rule_unit_tests_catch_a_broken_rule(name, tmp_path):
    old, new = MUTATIONS[name]
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    mutated = [path for path in RULE_FILES for _ in range(path.read_text().count(old))]
    assert len(mutated) == 1, f"mutation {name!r} no longer applies (or is ambiguous): update MUTATIONS"
    for path in RULE_FILES:
        (tmp_path / "rules" / path.name).write_text(path.read_text().replace(old, new))
    for test_file in RULE_TESTS:
        shutil.copy(test_file, tmp_path / "tests")
    # One promtool run per test file, stopping at the first that fails: the same verdict as one run
    # of them all, at a fraction of its time (the SLO file alone is half of it).
    tried = []
    for test_file in rule_tests_loading(mutated[0]):
        tried.append(test_file.name)
        if run_tool("promtool", "test", "rules", test_file.name, cwd=tmp_path / "tests").returncode != 0:
            return
    pytest.fail(f"the rule unit tests did not notice: {name} (ran {tried})")


def test_rule_unit_tests_load_the_rule_files_they_test():
    for path in RULE_FILES:
        assert rule_tests_loading(path), f"no rule unit test loads {path.name}"
    assert [t.name for t in rule_tests_loading(MON / "rules" / "slo.yml")][0] == "slo.yml"


def test_every_rule_has_a_firing_and_a_quiet_unit_test():
    fires: set[str] = set()
    quiet: set[str] = set()
    for test_file in RULE_TESTS:
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "rules without a test where they fire"
    # The Watchdog fires always, by design: there is no input where it must not.
    assert names - quiet == {"Watchdog"}, "rules without a test where they must not fire"


def test_every_rule_is_documented_and_routable():
    runbook = (MON / "runbook.md").read_text()
    sections = {m.lower() for m in re.findall(r"^## (\w+)$", runbook, re.M)}
    required = {"XGBServiceDown", "XGBOverloaded", "XGBBatchingSaturated", "XGBNoTraffic", "XGBServiceHighCPU",
                "XGBServiceHighMemory", "XGBPredictionDrift", "XGBInputOutOfRange", "XGBWorkerRestarted",
                "XGBWorkerCrashLooping", "NginxDown", "Watchdog", "PrometheusRuleEvaluationFailures",
                "PrometheusAlertmanagerUnreachable", "XGBFeatureDrift"} | {
                f"XGB{slo}{burn}" for slo in ("Availability", "Latency") for burn in ("FastBurn", "SlowBurn", "BudgetBurn")}  # fmt: skip
    assert required <= {rule["alert"] for rule in alert_rules()}
    # One configurable base for every runbook link: an absolute URL in prometheus.yml
    base = yaml.safe_load((MON / "prometheus.yml").read_text())["global"]["external_labels"]["runbook_base"]
    assert urlparse(base).scheme == "https" and base.endswith("/monitoring/runbook.md"), base
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in (("none",) if name == "Watchdog" else ("critical", "warning")), name
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys(), name
        assert rule["annotations"]["runbook_url"] == f"{{{{ $externalLabels.runbook_base }}}}#{name.lower()}", name
        assert name.lower() in sections, f"runbook.md has no section for {name}"
        # XGBServiceDown inhibits the others through this label (alertmanager.yml)
        if "xgb_" in rule["expr"] or 'job="xgb-service"' in rule["expr"]:
            assert rule["labels"].get("service") == "xgb-service", name


def test_the_slo_document_states_the_burn_rate_alerts_the_rules_have():
    """monitoring/slo.md's alert table: burn rate, windows and severity of each alert, as in rules/slo.yml."""
    units = {"min": "m", "h": "h", "days": "d"}
    budgets = {"Availability": ("availability", 0.001), "Latency": ("latency", 0.01)}
    rules = {rule["alert"]: rule for rule in alert_rules()}
    rows = re.findall(r"^\| (XGB\w+), (XGB\w+) \| ([\d.]+) \| (\d+) (\w+) and (\d+) (\w+) \|.*\((\w+)\) \|$",
                      (MON / "slo.md").read_text(), re.M)
    assert len(rows) == 3, rows
    for *names, factor, long_n, long_unit, short_n, short_unit, severity in rows:
        windows = (f"{long_n}{units[long_unit]}", f"{short_n}{units[short_unit]}")
        for name in names:
            slo, budget = budgets[re.match(r"XGB(Availability|Latency)", name).group(1)]
            expr, labels = rules[name]["expr"], rules[name]["labels"]
            assert (labels["severity"], labels["slo"]) == (severity, slo), name
            for window in windows:
                assert f'slo:sli_error:ratio_rate{window}{{slo="{slo}"}} > {factor} * {budget}' in expr, (name, window)
            assert f'slo:sli_requests:rate{windows[0]}{{slo="{slo}"}} *' in expr and ">= 1000" in expr, name
    recorded = {(rule["record"], rule["labels"]["slo"]) for rule in all_rules() if rule.get("record", "").startswith("slo:")}
    assert recorded == {(f"slo:sli_{kind}{w}", slo) for kind in ("error:ratio_rate", "requests:rate")
                        for w in ("5m", "30m", "1h", "6h", "3d") for slo in ("availability", "latency")}  # fmt: skip


# --- Alertmanager ----------------------------------------------------------------------------


def test_amtool_check_config_docker_and_local(tmp_path):
    assert_ok(run_tool("amtool", "check-config", "alertmanager.yml"))
    local = tmp_path / "alertmanager.yml"
    local.write_text(yaml.safe_dump(localstack.local_alertmanager_config(PORTS)))
    assert_ok(run_tool("amtool", "check-config", str(local)))


@pytest.mark.parametrize(
    "labels, receiver",
    [
        (["alertname=XGBServiceDown", "severity=critical", "service=xgb-service"], "webhook-critical"),
        (["alertname=XGBNoTraffic", "severity=warning", "service=xgb-service"], "webhook-warning"),
        (["alertname=Unlabelled"], "webhook-warning"),
        (["alertname=Watchdog", "severity=none"], "watchdog"),
    ],
)
def test_alertmanager_routes_by_severity(labels, receiver):
    result = run_tool("amtool", "config", "routes", "test", "--config.file=alertmanager.yml", *labels)
    assert_ok(result)
    assert result.stdout.strip() == receiver


def test_inhibitions_in_a_real_alertmanager(tmp_path):
    """Alerts posted to a real Alertmanager running alertmanager.yml: which ones it inhibits."""
    def alert(name: str, severity: str, **labels: str) -> dict:
        return {"labels": {"alertname": name, "severity": severity, **labels}}

    svc = {"service": "xgb-service"}
    posted = {
        "down a": alert("XGBServiceDown", "critical", instance="a:3000", **svc),
        "restart a": alert("XGBWorkerRestarted", "warning", instance="a:3000", **svc),  # the down instance's
        "restart b": alert("XGBWorkerRestarted", "warning", instance="b:3000", **svc),  # another instance's
        "fast burn": alert("XGBAvailabilityFastBurn", "critical", slo="availability", **svc),  # fleet-wide
        "budget burn": alert("XGBAvailabilityBudgetBurn", "warning", slo="availability", **svc),  # its page fires
        "latency budget": alert("XGBLatencyBudgetBurn", "warning", slo="latency", **svc),  # another SLO
        "memory b": alert("XGBServiceHighMemory", "warning", instance="b:3000", **svc),  # no SLO: not silenced by pages
        "crash loop c": alert("XGBWorkerCrashLooping", "critical", instance="c:3000", **svc),
        "restart c": alert("XGBWorkerRestarted", "warning", instance="c:3000", **svc),
    }
    inhibited = {"restart a", "budget burn", "restart c"}
    ports = localstack.Ports(free_port(), free_port(), free_port(), free_port())
    with localstack.LocalStack(tmp_path, "127.0.0.1:1", ports) as stack:
        requests.post(f"{stack.alertmanager_url}/api/v2/alerts", json=list(posted.values()), timeout=5).raise_for_status()
        state = {}
        for a in requests.get(f"{stack.alertmanager_url}/api/v2/alerts", timeout=5).json():
            key = next(k for k, v in posted.items() if v["labels"] == a["labels"])
            state[key] = bool(a["status"]["inhibitedBy"])
    assert state == {key: key in inhibited for key in posted}


# --- Grafana ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dashboard", dashboards.DASHBOARDS, ids=lambda d: d.uid)
def test_committed_dashboard_json_matches_the_generator(dashboard):
    path = dashboards.path_of(dashboard)
    assert path.exists(), f"{path} missing: run `make dashboards`"
    assert path.read_text() == dashboards.render(dashboard), f"{path} is stale: run `make dashboards` and commit"


@pytest.mark.parametrize("dashboard", dashboards.DASHBOARDS, ids=lambda d: d.uid)
def test_dashboard_panels_are_well_formed(dashboard):
    model = json.loads(dashboards.path_of(dashboard).read_text())
    provisioned = yaml.safe_load((MON / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    # $datasource: any Prometheus, the provisioned one by default; $instance: All by default
    assert variables["datasource"]["query"] == provisioned["type"]
    assert variables["datasource"]["current"]["value"] == provisioned["uid"]
    instance = variables["instance"]
    assert instance["includeAll"] and instance["current"]["value"] == "$__all" and instance["allValue"] == ".*"
    assert instance["definition"] == f'label_values(up{{job="{dashboard.instance_job}"}}, instance)'
    panels = model["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not area & cells, f"panel {panel['title']!r} overlaps another"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
            # every query of the dashboard's own job follows the instance picker
            if f'job="{dashboard.instance_job}"' in target["expr"]:
                assert f'job="{dashboard.instance_job}",instance=~"$instance"' in target["expr"], target["expr"]
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        if panel["type"] == "stat" and any(re.match(r"(nginx_)?up\b", t["expr"]) for t in panel["targets"]):
            # an "up" stat is red at 0 and green at 1 (Grafana's default base color is green)
            assert steps == [{"color": "red", "value": None}, {"color": "green", "value": 1}], panel["title"]
        if panel["type"] == "heatmap":
            # rate, not increase over $__rate_interval: those windows overlap between points and
            # would count each event several times
            for target in panel["targets"]:
                assert target["format"] == "heatmap" and "increase(" not in target["expr"] and "rate(" in target["expr"]


def test_rules_and_panels_know_only_the_status_codes_the_service_sends():
    """Overload is 503 + Retry-After (serving/fastpath.py); the service never answers 429."""
    exprs = [rule["expr"] for rule in all_rules()] + [q.expr for d in dashboards.DASHBOARDS for _, q in d.queries()]
    texts = exprs + [p.title for d in dashboards.DASHBOARDS for r in d.rows for p in r.panels]
    assert not [t for t in texts if "429" in t]
    assert any('http_response_code="503"' in e for e in exprs)


def test_runbook_names_dashboards_and_panels_that_exist():
    runbook = (MON / "runbook.md").read_text()
    titles = {d.title for d in dashboards.DASHBOARDS}
    panels = {p.title for d in dashboards.DASHBOARDS for r in d.rows for p in r.panels}
    named_dashboards = re.findall(r'dashboard "([^"]+)"', runbook, re.I)
    named_panels = re.findall(r'panel "([^"]+)"', runbook, re.I)
    assert named_dashboards and named_panels
    assert set(named_dashboards) - titles == set()
    assert set(named_panels) - panels == set()


def test_dashboards_cover_what_the_issue_asks_for():
    exprs = " ".join(q.expr for _, q in dashboards.SERVICE.queries())
    for needed in ("bentoml_service_request_total", "histogram_quantile(0.99", "histogram_quantile(0.5",
                   "histogram_quantile(0.95", "bentoml_service_request_in_progress",
                   "bentoml_service_adaptive_batch_size_bucket", "xgb_predictions_total", "xgb_prediction_confidence",
                   "xgb_input_out_of_range_total", "xgb_input_records_checked_total", "xgb_model_info", "xgb_class_reference_ratio",
                   "rate(xgb_process_cpu_seconds_total", "xgb_process_resident_memory_bytes", "xgb_worker_starts_total",
                   'slo:sli_error:ratio_rate5m{slo="availability"}', 'slo:sli_error:ratio_rate3d{slo="latency"}',
                   "xgb:feature_psi:1h", "xgb_feature_bin_total"):  # fmt: skip
        assert needed in exprs, f"no dashboard query uses {needed}"


# --- the local stack's configs vs the docker-compose ones ------------------------------------


def test_local_prometheus_config_differs_only_in_addresses():
    docker = yaml.safe_load((MON / "prometheus.yml").read_text())
    local = localstack.local_prometheus_config("127.0.0.1:3123", PORTS)
    assert local["global"] == docker["global"]
    assert local["rule_files"] == [str(MON / pattern) for pattern in docker["rule_files"]]
    assert RULE_FILES and all(p.is_file() for p in RULE_FILES)
    docker_jobs = {job["job_name"]: job for job in docker["scrape_configs"]}
    local_jobs = {job["job_name"]: job for job in local["scrape_configs"]}
    assert set(docker_jobs) - set(local_jobs) == {"nginx"}  # no nginx in front of `make serve`
    for name, job in local_jobs.items():
        assert {k: v for k, v in job.items() if k != "static_configs"} == {
            k: v for k, v in docker_jobs[name].items() if k != "static_configs"
        }
    assert local_jobs["xgb-service"]["static_configs"] == [{"targets": ["127.0.0.1:3123"]}]
    assert local_jobs["node"]["static_configs"] == [{"targets": ["127.0.0.1:19100"]}]
    assert local["alerting"]["alertmanagers"][0]["static_configs"] == [{"targets": ["127.0.0.1:19093"]}]


def test_local_alertmanager_config_differs_only_in_webhook_address():
    docker = yaml.safe_load((MON / "alertmanager.yml").read_text())
    local = localstack.local_alertmanager_config(PORTS)
    urls = [w["url"] for r in local["receivers"] for w in r["webhook_configs"]]
    assert sorted(set(urls)) == ["http://127.0.0.1:15001/alerts", "http://127.0.0.1:15001/watchdog"]
    for receiver in local["receivers"] + docker["receivers"]:
        receiver.pop("webhook_configs")
    assert local == docker


def test_an_unknown_docker_address_is_a_clear_error(tmp_path, monkeypatch):
    config = yaml.safe_load((MON / "prometheus.yml").read_text())
    config["scrape_configs"].append({"job_name": "new", "static_configs": [{"targets": ["new-exporter:9999"]}]})
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    monkeypatch.setattr(localstack, "PROMETHEUS_CONFIG", tmp_path / "prometheus.yml")
    with pytest.raises(KeyError, match="new-exporter:9999.*no local counterpart"):
        localstack.local_prometheus_config("127.0.0.1:3000", PORTS)


# --- docker-compose (no Docker engine here: validated by docker-compose v1, then structure) ---


def compose_env(**variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XGB_IMAGE", "GRAFANA_ADMIN_PASSWORD")}
    return {**env, **variables}


def test_docker_compose_accepts_the_file():
    """`docker-compose config` (Debian's v1, needs no engine) validates against the compose schema."""
    env = compose_env(XGB_IMAGE="xgb-prediction-service:test", GRAFANA_ADMIN_PASSWORD="s3cret")
    assert_ok(run_tool("docker-compose", "-f", "docker-compose.yml", "config", "-q", env=env))


@pytest.mark.parametrize("missing", ["GRAFANA_ADMIN_PASSWORD", "XGB_IMAGE"])
def test_docker_compose_refuses_to_start_without_required_settings(missing):
    env = compose_env(**{name: "x" for name in ("XGB_IMAGE", "GRAFANA_ADMIN_PASSWORD") if name != missing})
    result = run_tool("docker-compose", "-f", "docker-compose.yml", "config", "-q", env=env)
    assert result.returncode != 0 and f"set {missing}" in result.stderr, result.stderr


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((MON / "docker-compose.yml").read_text())


def container_ports(service: dict) -> set[int]:
    ports = {int(p) for p in service.get("expose", [])}
    ports |= {int(str(p).rsplit(":", 1)[-1]) for p in service.get("ports", [])}
    return ports


def assert_address_in_compose(compose: dict, address: str, what: str) -> None:
    host, port = address.rsplit(":", 1)
    assert host in compose["services"], f"{what}: {address} is not a docker-compose service"
    assert int(port) in container_ports(compose["services"][host]), f"{what}: {host} does not expose port {port}"


def test_compose_has_the_whole_stack(compose):
    assert {"xgb-service", "nginx", "prometheus", "grafana", "alertmanager", "node-exporter", "nginx-exporter",
            "alert-logger"} <= compose["services"].keys()  # fmt: skip


def test_compose_bind_mounts_exist_and_match_the_configs(compose):
    mounts = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("./"):
                assert (MON / source).exists(), f"{name} mounts {source}, which does not exist"
                mounts[target] = MON / source
            else:
                assert source.startswith("/") or source in compose["volumes"], f"{name}: undeclared volume {source}"
    # Prometheus loads every rule file in the directory next to its config; Grafana's provider reads the mounted dashboards
    assert mounts["/etc/prometheus/prometheus.yml"] == MON / "prometheus.yml"
    assert yaml.safe_load((MON / "prometheus.yml").read_text())["rule_files"] == ["rules/*.yml"]
    assert mounts["/etc/prometheus/rules"] == MON / "rules"
    provider = yaml.safe_load((MON / "grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == dashboards.DASHBOARD_DIR
    assert mounts["/etc/grafana/provisioning"] == MON / "grafana/provisioning"
    assert mounts["/app/alert_logger.py"] == MON / "alert_logger.py"
    assert mounts["/etc/alertmanager/alertmanager.yml"] == MON / "alertmanager.yml"
    assert mounts["/etc/nginx/nginx.conf"] == MON / "nginx.conf"


def test_prometheus_targets_are_compose_services(compose):
    config = yaml.safe_load((MON / "prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                if target.startswith("localhost:"):  # Prometheus itself
                    assert int(target.split(":")[1]) in container_ports(compose["services"]["prometheus"])
                elif target.startswith("host.docker.internal:"):  # node exporter, on the host's network
                    node = compose["services"]["node-exporter"]
                    assert node["network_mode"] == "host" and node["pid"] == "host"
                    assert any(a.startswith("--web.listen-address=") and a.endswith(target.rsplit(":", 1)[1]) for a in node["command"])
                    assert "host.docker.internal:host-gateway" in compose["services"]["prometheus"]["extra_hosts"]
                else:
                    assert_address_in_compose(compose, target, f"job {job['job_name']}")
    for target in config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]:
        assert_address_in_compose(compose, target, "alerting")


def test_other_addresses_are_compose_services(compose):
    for receiver in yaml.safe_load((MON / "alertmanager.yml").read_text())["receivers"]:
        for webhook in receiver["webhook_configs"]:
            assert_address_in_compose(compose, urlparse(webhook["url"]).netloc, f"webhook {receiver['name']}")
    datasource = yaml.safe_load((MON / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert_address_in_compose(compose, urlparse(datasource["url"]).netloc, "grafana datasource")
    nginx = (MON / "nginx.conf").read_text()
    for upstream in re.findall(r"^\s*server\s+([\w.-]+:\d+)", nginx, re.M):
        assert_address_in_compose(compose, upstream, "nginx upstream")
    scrape_uri = next(a for a in compose["services"]["nginx-exporter"]["command"] if a.startswith("--nginx.scrape-uri="))
    url = urlparse(scrape_uri.split("=", 1)[1])
    assert_address_in_compose(compose, url.netloc, "nginx-exporter scrape uri")
    assert re.search(rf"listen {url.port};\s*location = {re.escape(url.path)} \{{\s*stub_status;", nginx)


def test_unauthenticated_uis_are_published_on_loopback_only(compose):
    for name in ("prometheus", "alertmanager"):
        assert compose["services"][name]["ports"] and all(p.startswith("127.0.0.1:") for p in compose["services"][name]["ports"]), name
    for name, service in compose["services"].items():
        if name not in ("nginx", "grafana"):  # the API and Grafana (which has a password) are meant to be reached
            assert all(str(p).startswith("127.0.0.1:") for p in service.get("ports", [])), name


def test_services_start_after_what_they_need_is_healthy(compose):
    assert compose["services"]["nginx"]["depends_on"] == {"xgb-service": {"condition": "service_healthy"}}
    assert "/readyz" in " ".join(compose["services"]["xgb-service"]["healthcheck"]["test"])


def nginx_argv(tmp_path: Path, upstream: str, listen: int = 8080, status: int = 8081) -> list[str]:
    """nginx running monitoring/nginx.conf in tmp_path, with the compose upstream (which nginx
    resolves when it loads the config) and the listening ports replaced."""
    conf = (MON / "nginx.conf").read_text().replace("server xgb-service:3000;", f"server {upstream};")
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{listen};").replace("listen 8081;", f"listen 127.0.0.1:{status};")
    (tmp_path / "logs").mkdir(exist_ok=True)
    (tmp_path / "nginx.conf").write_text(conf)
    return ["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
            "-g", f"daemon off; pid {tmp_path}/nginx.pid; error_log stderr;"]  # fmt: skip


def test_nginx_config_is_valid_and_has_what_the_runbook_relies_on(tmp_path):
    assert_ok(run_tool(*nginx_argv(tmp_path, "127.0.0.1:3000"), "-t"))
    text = (MON / "nginx.conf").read_text()
    # idle upstream connections closed before uvicorn's 5 s keep-alive timeout closes them (else 502s)
    assert int(re.search(r"keepalive_timeout (\d+)s;", text).group(1)) < 5
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in text
    assert "proxy_set_header X-Forwarded-Proto $scheme;" in text
    assert re.search(r"limit_req zone=per_client burst=\d+ nodelay;", text) and "limit_req_zone" in text


def test_grafana_password_comes_from_the_environment(compose):
    env = compose["services"]["grafana"]["environment"]
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), "the password must be required from the environment"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"


# --- the webhook receiver --------------------------------------------------------------------


def test_alert_logger_prints_each_alert_and_refuses_garbage(capsys):
    received: list[dict] = []
    port = free_port()
    server = alert_logger.make_server("127.0.0.1", port, received.append)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        payload = {"status": "firing", "alerts": [
            {"status": "firing", "labels": {"alertname": "XGBServiceDown", "severity": "critical"},
             "annotations": {"summary": "XGBoost service is not answering /metrics on svc:3000"}},
            {"status": "resolved", "labels": {"alertname": "XGBNoTraffic", "severity": "warning"}, "annotations": {}},
        ]}  # fmt: skip
        assert requests.post(f"http://127.0.0.1:{port}/alerts", json=payload, timeout=5).status_code == 200
        assert requests.post(f"http://127.0.0.1:{port}/alerts", data=b"{nope", timeout=5).status_code == 400
    finally:
        server.shutdown()
        server.server_close()
    assert received == [payload]
    assert capsys.readouterr().out.splitlines() == [
        "[FIRING] XGBServiceDown (critical): XGBoost service is not answering /metrics on svc:3000",
        "[RESOLVED] XGBNoTraffic (warning)",
    ]


def test_grafana_and_the_query_checker_know_the_scrape_interval():
    """$__rate_interval depends on it: Grafana is told it, the checker fills in 4 x it."""
    scrape = yaml.safe_load((MON / "prometheus.yml").read_text())["global"]["scrape_interval"]
    datasource = yaml.safe_load((MON / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert datasource["jsonData"]["timeInterval"] == scrape
    seconds = {"s": 1, "m": 60}
    assert 4 * int(scrape[:-1]) * seconds[scrape[-1]] == int(check_dashboards.RATE_INTERVAL[:-1]) * seconds[check_dashboards.RATE_INTERVAL[-1]]
