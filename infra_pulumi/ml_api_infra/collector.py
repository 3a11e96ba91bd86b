"""The ADOT collector sidecar: its config (generated from the service's scrape job) and its container.

The collector scrapes the service's /metrics on localhost with the job monitoring/prometheus.yml
defines for the service (same job name, path, interval and metric relabeling, so the rules see the
same series in AMP as in the local Prometheus), remote-writes them to AMP with SigV4, and forwards
the service's OTLP traces to X-Ray. Each task is its own target at localhost, so the target's
`instance` (localhost:3000 in every task) is replaced by the ECS task id, and the task's AZ is
added as `availability_zone`: `sum by (job, instance)` in the rules stays per task.

The committed file (ADOT_CONFIG_PATH) is what the task runs; `python -m ml_api_infra.collector`
regenerates it, and the tests fail when it differs from generated_config().
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .settings import CONTAINER_PORT

REPO_DIR = Path(__file__).resolve().parents[2]
PROMETHEUS_CONFIG = REPO_DIR / "monitoring" / "prometheus.yml"
ADOT_CONFIG_PATH = Path(__file__).resolve().parent / "adot-collector.yaml"
SERVICE_JOB = "xgb-service"
# Pinned: a new collector release changes what the config means (public.ecr.aws/aws-observability).
ADOT_IMAGE = "public.ecr.aws/aws-observability/aws-otel-collector:v0.43.3"
COLLECTOR_CONTAINER_NAME = "adot-collector"
# The ADOT image's health probe binary queries the health_check extension on this port.
HEALTH_CHECK_PORT = 13133
OTLP_GRPC_PORT = 4317
# The collector's share of the task (cpu units of 1/1024 vCPU, MiB); docs/deployment.md's cost table.
COLLECTOR_CPU = 128
COLLECTOR_MEMORY_MIB = 256
# Environment the config reads (${env:...}); set on the sidecar by container_definition().
REMOTE_WRITE_ENV = "AMP_REMOTE_WRITE_URL"
REGION_ENV = "AWS_REGION"
TASK_LABEL_SOURCE = "aws.ecs.task.id"
AZ_LABEL = "availability_zone"


def service_scrape_job(prometheus_config: Path = PROMETHEUS_CONFIG) -> tuple[dict[str, Any], str]:
    """The service's job and the scrape interval, from the local Prometheus config."""
    config = yaml.safe_load(prometheus_config.read_text())
    [job] = [j for j in config["scrape_configs"] if j["job_name"] == SERVICE_JOB]
    return job, config["global"]["scrape_interval"]


def generated_config(port: int = CONTAINER_PORT) -> dict[str, Any]:
    job, interval = service_scrape_job()
    scrape = {"job_name": SERVICE_JOB, "scrape_interval": interval,
              "metrics_path": job.get("metrics_path", "/metrics"),
              "static_configs": [{"targets": [f"localhost:{port}"]}],
              "metric_relabel_configs": job.get("metric_relabel_configs", [])}
    return {
        "extensions": {
            "health_check": {"endpoint": f"0.0.0.0:{HEALTH_CHECK_PORT}"},
            "sigv4auth": {"region": f"${{env:{REGION_ENV}}}", "service": "aps"},
        },
        "receivers": {
            "prometheus": {"config": {"scrape_configs": [scrape]}},
            # The service in the same task only: localhost.
            "otlp": {"protocols": {"grpc": {"endpoint": f"127.0.0.1:{OTLP_GRPC_PORT}"}}},
        },
        "processors": {
            # In MiB, not a share: the only memory limit the sidecar sees is the whole task's.
            "memory_limiter": {"check_interval": "1s", "limit_mib": COLLECTOR_MEMORY_MIB - 56, "spike_limit_mib": 50},
            # The task's id, AZ, cluster... from the ECS task metadata endpoint.
            "resourcedetection/ecs": {"detectors": ["env", "ecs"], "timeout": "5s", "override": False},
            # `instance` is the target's service.instance.id: the task, not localhost:PORT.
            "resource/task": {"attributes": [
                {"key": "service.instance.id", "from_attribute": TASK_LABEL_SOURCE, "action": "upsert"}]},
            "transform/availability_zone": {"metric_statements": [{"context": "datapoint", "statements": [
                f'set(attributes["{AZ_LABEL}"], resource.attributes["cloud.availability_zone"])']}]},
            "batch/metrics": {"timeout": "30s"},
            "batch/traces": {"timeout": "1s", "send_batch_size": 50},
        },
        "exporters": {
            "prometheusremotewrite": {"endpoint": f"${{env:{REMOTE_WRITE_ENV}}}",
                                      "auth": {"authenticator": "sigv4auth"}},
            "awsxray": {"region": f"${{env:{REGION_ENV}}}"},
        },
        "service": {
            "extensions": ["health_check", "sigv4auth"],
            "pipelines": {
                "metrics": {"receivers": ["prometheus"],
                            "processors": ["memory_limiter", "resourcedetection/ecs", "resource/task",
                                           "transform/availability_zone", "batch/metrics"],
                            "exporters": ["prometheusremotewrite"]},
                "traces": {"receivers": ["otlp"],
                           "processors": ["memory_limiter", "resourcedetection/ecs", "batch/traces"],
                           "exporters": ["awsxray"]},
            },
        },
    }


HEADER = ("# GENERATED by `python -m ml_api_infra.collector` (run in infra_pulumi/) from\n"
          "# monitoring/prometheus.yml's xgb-service job and the container port: do not edit by hand.\n"
          "# The ADOT collector sidecar's config (AOT_CONFIG_CONTENT; see collector.py).\n")


def render(config: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(config, sort_keys=False, width=120)


def committed_config() -> str:
    return ADOT_CONFIG_PATH.read_text()


def container_definition(region: str, remote_write_url: str, log_group: str) -> dict[str, Any]:
    """The sidecar: runs the committed config, healthy once the health_check extension answers."""
    environment = {"AOT_CONFIG_CONTENT": committed_config(), REMOTE_WRITE_ENV: remote_write_url,
                   REGION_ENV: region}
    return {
        "name": COLLECTOR_CONTAINER_NAME,
        "image": ADOT_IMAGE,
        "essential": True,
        "cpu": COLLECTOR_CPU,
        "memoryReservation": COLLECTOR_MEMORY_MIB,
        "readonlyRootFilesystem": True,
        "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
        "healthCheck": {"command": ["CMD", "/healthcheck"], "interval": 10, "timeout": 5,
                        "retries": 3, "startPeriod": 10},
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": log_group, "awslogs-region": region,
            "awslogs-stream-prefix": "adot", "mode": "non-blocking", "max-buffer-size": "1m"}},
    }


def with_collector(service: dict[str, Any], region: str, remote_write_url: str, log_group: str) -> list[dict]:
    """The service container first (ops and the ALB name it), starting only once the collector is healthy."""
    return [{**service, "dependsOn": [{"containerName": COLLECTOR_CONTAINER_NAME, "condition": "HEALTHY"}]},
            container_definition(region, remote_write_url, log_group)]


if __name__ == "__main__":
    ADOT_CONFIG_PATH.write_text(render(generated_config()))
    print(f"wrote {ADOT_CONFIG_PATH}")
