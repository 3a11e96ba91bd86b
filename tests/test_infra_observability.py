"""Production observability in the Pulumi program, under `pulumi.runtime.set_mocks`: the AMP
workspace, its rule groups (the files in monitoring/rules), the alert manager to SNS, the ADOT
sidecar (config, health check, start order) and the task role's scope. Messages name the resource.

No OpenTelemetry collector build can be installed here (otelcol-contrib is on neither PyPI, npm nor
Debian), so the collector config is checked for its schema; its scrape half, which has
Prometheus's schema, is run by a real Prometheus against a live `bentoml serve`
(tests/test_collector_scrape.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "infra_pulumi"))

from ml_api_infra import collector, managed_prometheus  # noqa: E402
from ml_api_infra.mocks import Program, run_program, stack_config  # noqa: E402
from ml_api_infra.settings import CONTAINER_PORT  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TASK_DEF = "aws:ecs/taskDefinition:TaskDefinition"
WORKSPACE_ARN = "arn:aws:aps:us-west-2:123456789012:workspace/ws-0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
# What the ADOT collector distribution ships (aws-otel-collector docs/components.md), by kind.
ADOT_COMPONENTS = {
    "receivers": {"otlp", "prometheus", "awsxray", "awsecscontainermetrics", "statsd", "zipkin", "jaeger",
                  "filelog", "kafka", "hostmetrics"},
    "processors": {"batch", "memory_limiter", "resourcedetection", "resource", "attributes", "transform",
                   "filter", "metricstransform", "probabilistic_sampler", "span", "tail_sampling",
                   "groupbytrace", "cumulativetodelta", "deltatorate", "metricsgeneration", "k8sattributes"},
    "exporters": {"awsxray", "awsemf", "prometheusremotewrite", "prometheus", "otlp", "otlphttp", "debug",
                  "file", "kafka", "loadbalancing", "awscloudwatchlogs"},
    "extensions": {"health_check", "sigv4auth", "pprof", "zpages", "ecs_observer", "awsproxy", "file_storage"},
}


@pytest.fixture(scope="module")
def prod() -> Program:
    return run_program(stack_config("prod"))


def containers(program: Program) -> dict[str, dict]:
    task = program.one(TASK_DEF)
    return {c["name"]: c for c in json.loads(task.inputs["containerDefinitions"])}


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["environment"]}


def locally_loaded_rules() -> dict[str, dict]:
    """Every rule the local Prometheus loads (prometheus.yml's rule_files, relative to monitoring/), by name."""
    config = yaml.safe_load((REPO / "monitoring" / "prometheus.yml").read_text())
    rules = {}
    for pattern in config["rule_files"]:
        for path in sorted((REPO / "monitoring").glob(pattern)):
            for group in yaml.safe_load(path.read_text())["groups"]:
                for rule in group["rules"]:
                    rules[f"{group['name']}/{rule.get('alert') or rule.get('record')}/{rule['expr']}"] = rule
    return rules


# --- the collector config --------------------------------------------------------------------------

def test_the_committed_collector_config_is_the_generated_one():
    assert collector.committed_config() == collector.render(collector.generated_config()), \
        f"{collector.ADOT_CONFIG_PATH} is stale: run `python -m ml_api_infra.collector` in infra_pulumi/"


def test_every_component_a_pipeline_uses_is_defined_and_shipped_by_adot():
    config = yaml.safe_load(collector.committed_config())
    for kind in ("receivers", "processors", "exporters", "extensions"):
        for component in config[kind]:
            assert component.split("/")[0] in ADOT_COMPONENTS[kind], f"{kind}: ADOT has no {component!r}"
    assert set(config["service"]["extensions"]) == set(config["extensions"]), "an extension is defined but not enabled"
    used = {kind: set() for kind in ("receivers", "processors", "exporters")}
    for name, pipeline in config["service"]["pipelines"].items():
        assert name.split("/")[0] in ("metrics", "traces", "logs"), name
        for kind in used:
            assert pipeline.get(kind) or kind == "processors", f"pipeline {name} has no {kind}"
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"pipeline {name}: {kind[:-1]} {component!r} is not defined"
                used[kind].add(component)
    for kind, names in used.items():
        assert names == set(config[kind]), f"{kind} defined but in no pipeline: {set(config[kind]) - names}"
    assert config["service"]["pipelines"]["metrics"]["exporters"] == ["prometheusremotewrite"]
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["awsxray"]
    assert config["exporters"]["prometheusremotewrite"]["auth"] == {"authenticator": "sigv4auth"}
    assert config["extensions"]["sigv4auth"]["service"] == "aps"
    limiter = config["processors"]["memory_limiter"]
    assert limiter["limit_mib"] < collector.COLLECTOR_MEMORY_MIB, "the collector drops data before it outgrows its reservation"


def test_the_collector_scrapes_the_service_job_of_prometheus_yml_on_localhost():
    job, interval = collector.service_scrape_job()
    [scrape] = yaml.safe_load(collector.committed_config())["receivers"]["prometheus"]["config"]["scrape_configs"]
    assert scrape["static_configs"] == [{"targets": [f"localhost:{CONTAINER_PORT}"]}], scrape
    assert scrape["metrics_path"] == job["metrics_path"] == "/metrics"
    assert (scrape["job_name"], scrape["scrape_interval"]) == (job["job_name"], interval)
    assert scrape["metric_relabel_configs"] == job["metric_relabel_configs"], "the same series as locally"
    # The collector expands ${...} in its config: a `$` of a relabel regex would be read as a variable.
    assert "$" not in json.dumps(scrape)


def test_instance_is_the_task_and_availability_zone_is_added():
    config = yaml.safe_load(collector.committed_config())
    processors = config["service"]["pipelines"]["metrics"]["processors"]
    assert processors.index("resourcedetection/ecs") < processors.index("resource/task") < processors.index("transform/availability_zone")
    assert "ecs" in config["processors"]["resourcedetection/ecs"]["detectors"]
    assert {"key": "service.instance.id", "from_attribute": "aws.ecs.task.id", "action": "upsert"} in \
        config["processors"]["resource/task"]["attributes"], "every task would be instance=localhost:3000"
    statements = config["processors"]["transform/availability_zone"]["metric_statements"][0]["statements"]
    assert statements == ['set(attributes["availability_zone"], resource.attributes["cloud.availability_zone"])']


def grouping_labels(expr: str) -> set[str]:
    """The labels an expression aggregates or matches by: `by (...)`, `on(...)`, `without (...)`, `ignoring(...)`."""
    found = set()
    for labels in re.findall(r"\b(?:by|on|without|ignoring)\s*\(([^)]*)\)", expr):
        found |= {label.strip() for label in labels.split(",") if label.strip()}
    return found


def test_the_rules_group_by_labels_that_mean_the_same_in_amp_as_locally():
    """Locally each container is its own target; in AMP every task's target is localhost:3000, made
    unique by the sidecar (instance = task id). A rule must not group by what only one side has."""
    sidecar_only = {collector.AZ_LABEL}
    for key, rule in locally_loaded_rules().items():
        labels = grouping_labels(rule["expr"])
        assert not labels & sidecar_only, f"{key}: groups by {labels & sidecar_only}, which only AMP has"
        if "instance" in labels and 'job="xgb-service"' in rule["expr"]:
            assert "job" in labels, f"{key}: instance without job"


# --- the stack -------------------------------------------------------------------------------------

def test_the_workspace_and_its_rule_groups_are_the_rule_files(prod):
    workspace = prod.one("aws:amp/workspace:Workspace")
    assert workspace.inputs["alias"] == "ml-api-prod", workspace.name
    namespaces = {r.inputs["name"]: r for r in prod.of_type("aws:amp/ruleGroupNamespace:RuleGroupNamespace")}
    files = {p.stem: p.read_text() for p in sorted((REPO / "monitoring" / "rules").glob("*.yml"))}
    assert set(namespaces) == set(files)
    for stem, namespace in namespaces.items():
        assert namespace.inputs["data"] == files[stem], f"{namespace.name} differs from monitoring/rules/{stem}.yml"
        assert namespace.inputs["workspaceId"] == "ws-0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9", namespace.name
    in_stack = {}
    for namespace in namespaces.values():
        for group in yaml.safe_load(namespace.inputs["data"])["groups"]:
            for rule in group["rules"]:
                in_stack[f"{group['name']}/{rule.get('alert') or rule.get('record')}/{rule['expr']}"] = rule
    local = locally_loaded_rules()
    assert len(local) > 40
    missing = set(local) - set(in_stack)
    assert not missing, f"rules the local Prometheus loads but the stack does not: {sorted(missing)[:5]}"
    assert in_stack == local


def test_alerts_route_as_locally_and_reach_the_sns_topic(prod):
    topic = prod.one("aws:sns/topic:Topic", "-prometheus-alerts")
    topic_arn = f"arn:aws:sns:us-west-2:123456789012:topic/{topic.inputs['name']}"
    definition = prod.one("aws:amp/alertManagerDefinition:AlertManagerDefinition")
    config = yaml.safe_load(yaml.safe_load(definition.inputs["definition"])["alertmanager_config"])
    local = yaml.safe_load((REPO / "monitoring" / "alertmanager.yml").read_text())
    assert config["route"] == local["route"] and config["inhibit_rules"] == local["inhibit_rules"], definition.name
    assert [r["name"] for r in config["receivers"]] == [r["name"] for r in local["receivers"]]
    for receiver in config["receivers"]:
        assert set(receiver) == {"name", "sns_configs"}, f"{definition.name}: {receiver['name']} is not SNS-only"
        [sns] = receiver["sns_configs"]
        assert sns["topic_arn"] == topic_arn and sns["sigv4"] == {"region": "us-west-2"}, receiver
    watchdog = next(r for r in config["receivers"] if r["name"] == "watchdog")
    assert watchdog["sns_configs"][0]["send_resolved"] is False
    policy = json.loads(prod.one("aws:sns/topicPolicy:TopicPolicy", "-prometheus-alerts").inputs["policy"])
    [aps] = [s for s in policy["Statement"] if s.get("Principal") == {"Service": "aps.amazonaws.com"}]
    assert "sns:Publish" in aps["Action"] and aps["Resource"] == topic_arn
    assert aps["Condition"]["ArnEquals"]["aws:SourceArn"] == WORKSPACE_ARN, "any workspace could publish"
    assert prod.of_type("aws:sns/topicSubscription:TopicSubscription") == [], "no e-mail configured"


def test_an_alarm_email_subscribes_to_the_prometheus_alerts_too():
    program = run_program({**stack_config(), "ml-api:alarmEmail": "oncall@example.com"})
    subscriptions = {s.name: s.inputs for s in program.of_type("aws:sns/topicSubscription:TopicSubscription")}
    email = subscriptions["ml-api-prod-prometheus-alerts-email"]
    assert (email["protocol"], email["endpoint"]) == ("email", "oncall@example.com")
    assert email["topic"].endswith("topic/ml-api-prod-prometheus-alerts")


def test_the_task_role_may_write_to_this_workspace_and_to_xray_only(prod):
    task_role = prod.one("aws:iam/role:Role", "-task")
    [policy] = [p for p in prod.of_type("aws:iam/rolePolicy:RolePolicy") if p.inputs["role"] == task_role.inputs["name"]]
    statements = {s["Sid"]: s for s in json.loads(policy.inputs["policy"])["Statement"]}
    assert set(statements) == {"RemoteWrite", "Traces"}, policy.name
    assert statements["RemoteWrite"]["Action"] == ["aps:RemoteWrite"], policy.name
    assert statements["RemoteWrite"]["Resource"] == WORKSPACE_ARN, f"{policy.name}: not this workspace only"
    assert statements["Traces"]["Action"] == ["xray:PutTraceSegments", "xray:PutTelemetryRecords"], policy.name


def test_the_sidecar_runs_the_committed_config_against_this_workspace(prod):
    sidecar = containers(prod)["adot-collector"]
    assert re.fullmatch(r"public\.ecr\.aws/aws-observability/aws-otel-collector:v\d+\.\d+\.\d+", sidecar["image"]), sidecar["image"]
    variables = env(sidecar)
    assert variables["AOT_CONFIG_CONTENT"] == collector.committed_config()
    assert variables["AMP_REMOTE_WRITE_URL"] == ("https://aps-workspaces.us-west-2.amazonaws.com/workspaces/"
                                                 "ws-0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9/api/v1/remote_write")
    assert variables["AWS_REGION"] == "us-west-2"
    # Every ${env:X} the config reads is set on the container.
    assert set(re.findall(r"\$\{env:(\w+)\}", variables["AOT_CONFIG_CONTENT"])) <= set(variables)
    assert sidecar["logConfiguration"]["options"]["awslogs-group"] == "/ecs/ml-api-prod"


def test_the_service_starts_only_once_the_collector_is_healthy(prod):
    by_name = containers(prod)
    assert list(by_name) == ["api", "adot-collector"], "the service's container stays first (ops, ALB)"
    sidecar, api = by_name["adot-collector"], by_name["api"]
    assert sidecar["healthCheck"]["command"] == ["CMD", "/healthcheck"], "the ADOT image's own probe"
    assert sidecar["essential"] is True, "a task without its collector would be unmonitored"
    assert api["dependsOn"] == [{"containerName": "adot-collector", "condition": "HEALTHY"}]
    task = prod.one(TASK_DEF)
    assert sidecar["cpu"] < int(task.inputs["cpu"]) / 4 and sidecar["memoryReservation"] < int(task.inputs["memory"]) / 4
    assert "portMappings" not in sidecar, "the collector listens to its own task only"


def test_stack_outputs_name_the_workspace(prod):
    assert prod.outputs["prometheusWorkspaceId"] == "ws-0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
    assert prod.outputs["prometheusEndpoint"].startswith("https://aps-workspaces.us-west-2.amazonaws.com/")


def test_the_dashboards_run_against_the_amp_datasource_unchanged():
    grafana = REPO / "monitoring" / "grafana"
    [local] = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    [amp] = yaml.safe_load((grafana / "amp" / "datasource.yml").read_text())["datasources"]
    assert (amp["uid"], amp["type"]) == (local["uid"], local["type"]), "the dashboards name the datasource by uid"
    assert amp["jsonData"]["sigV4Auth"] is True and amp["url"] == "${AMP_QUERY_URL}"
    [scrape] = yaml.safe_load(collector.committed_config())["receivers"]["prometheus"]["config"]["scrape_configs"]
    assert amp["jsonData"]["timeInterval"] == scrape["scrape_interval"], "sizes $__rate_interval"
    for path in sorted((grafana / "dashboards").glob("*.json")):
        uids = set(re.findall(r'"datasource":\s*\{[^}]*"uid":\s*"([^"]+)"', path.read_text()))
        assert uids <= {local["uid"], "${datasource}", "-- Grafana --", "grafana"}, f"{path.name}: {uids}"


def test_trace_sample_reaches_the_service_and_is_checked():
    api = env(containers(run_program(stack_config()))["api"])
    assert "XGB_TRACE_SAMPLE" not in api, "unset: the service's default"
    from ml_api_infra.collector import OTLP_GRPC_PORT

    # The service exports traces only when told where: here, to the sidecar's OTLP receiver.
    assert api["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://localhost:{OTLP_GRPC_PORT}", api
    program = run_program({**stack_config(), "ml-api:traceSample": "0.05"})
    assert env(containers(program)["api"])["XGB_TRACE_SAMPLE"] == "0.05"
    from ml_api_infra.settings import SettingsError

    with pytest.raises(SettingsError, match=r"ml-api:traceSample: a share of requests in \[0, 1\], got 5"):
        run_program({**stack_config(), "ml-api:traceSample": "5"})
