"""ECS cluster, Fargate task definition and service (private subnets, only the ALB can reach it)."""

from __future__ import annotations

from typing import Optional

import pulumi
import pulumi_aws as aws

from .collector import OTLP_GRPC_PORT, with_collector
from .settings import CONTAINER_PORT, StackSettings

CONTAINER_NAME = "api"
# BentoML images run as user `bentoml`, uid 1034.
CONTAINER_USER = "1034"
# The service drains in-flight requests on SIGTERM; ECS waits this long before SIGKILL.
STOP_TIMEOUT_SECONDS = 45
# Model load + worker start before failing ALB checks count against a new task.
HEALTH_CHECK_GRACE_SECONDS = 60
LIVENESS_PATH = "/livez"
TMP_VOLUME = "tmp"


def liveness_command(port: int = CONTAINER_PORT) -> list[str]:
    # The image has Python but not curl (python3 exists on both the slim and the Debian base);
    # /livez is cheap (no model call).
    probe = (f"import urllib.request; "
             f"urllib.request.urlopen('http://127.0.0.1:{port}{LIVENESS_PATH}', timeout=4)")
    return ["CMD-SHELL", f'python3 -c "{probe}" || exit 1']


def serve_command(settings: StackSettings) -> list[str]:
    return ["serve", "--timeout-keep-alive", str(settings.keep_alive_seconds)]


def model_source_environment(settings: StackSettings) -> dict[str, str]:
    """MODEL_URI / CANDIDATE_MODEL_URI (model_store/source.py imports them at start) from the stack config."""
    environment = {}
    if settings.model_uri:
        environment["MODEL_URI"] = settings.model_uri
    if settings.candidate_uri:
        environment["CANDIDATE_MODEL_URI"] = settings.candidate_uri
        environment.update(candidate_environment(settings))
    return environment


def candidate_environment(settings: StackSettings) -> dict[str, str]:
    """How a candidate model (a tag in the image, or a published URI) takes traffic."""
    environment = {"XGB_CANDIDATE_PERCENT": f"{settings.candidate_percent:g}"}
    if settings.candidate_mode:
        environment["XGB_CANDIDATE_MODE"] = settings.candidate_mode
    if settings.shadow_min_agreement is not None:
        environment["XGB_SHADOW_MIN_AGREEMENT"] = f"{settings.shadow_min_agreement:g}"
    return environment


def container_definitions(settings: StackSettings, image: str, log_group: str,
                          secret_arn: Optional[str], capture_uri: Optional[str] = None,
                          remote_write_url: Optional[str] = None) -> list[dict]:
    environment = {
        "XGB_WORKERS": str(settings.xgb_workers),
        "XGB_RANGE_CHECK": settings.range_check,
        # The root filesystem is read-only, and `bentoml serve` creates its store directories and
        # Prometheus multiprocess files under $BENTOML_HOME at start (the image's /home/bentoml is
        # not writable then). The model is served from the Bento in the image; a published one
        # (MODEL_URI) is imported into this store (model_store/stores.py).
        "BENTOML_HOME": "/tmp/bentoml",
        "TMPDIR": "/tmp",
    }
    if settings.cors_origins:
        environment["XGB_CORS_ORIGINS"] = settings.cors_origins
    if settings.model_tag:
        environment["MODEL_TAG"] = settings.model_tag
    environment.update(model_source_environment(settings))
    if remote_write_url:  # the ADOT sidecar runs: traces go to it (serving/tracing.py exports only when told where)
        environment["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://localhost:{OTLP_GRPC_PORT}"
    if settings.trace_sample is not None:
        environment["XGB_TRACE_SAMPLE"] = f"{settings.trace_sample:g}"
    if settings.candidate_tag:
        environment["XGB_CANDIDATE_TAG"] = settings.candidate_tag
        environment.update(candidate_environment(settings))
    if capture_uri:  # the capture bucket (capture.py); the task role may put objects there only
        environment.update(XGB_CAPTURE=f"{settings.capture_percent:g}", XGB_CAPTURE_URI=capture_uri)
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        # The image's entrypoint runs `bentoml serve <args> $BENTO_PATH`; the keep-alive outlasts the ALB's idle timeout.
        "command": serve_command(settings),
        "essential": True,
        "user": CONTAINER_USER,
        "readonlyRootFilesystem": True,
        "portMappings": [{"containerPort": CONTAINER_PORT, "protocol": "tcp"}],
        "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
        "mountPoints": [{"sourceVolume": TMP_VOLUME, "containerPath": "/tmp", "readOnly": False}],
        "healthCheck": {"command": liveness_command(), "interval": 15, "timeout": 5,
                        "retries": 3, "startPeriod": 60},
        "stopTimeout": STOP_TIMEOUT_SECONDS,
        "ulimits": [{"name": "nofile", "softLimit": 65536, "hardLimit": 65536}],
        "logConfiguration": {"logDriver": "awslogs", "options": {
            "awslogs-group": log_group, "awslogs-region": settings.region,
            "awslogs-stream-prefix": "api", "mode": "non-blocking", "max-buffer-size": "4m"}},
    }
    if secret_arn:
        container["secrets"] = [{"name": "XGB_API_KEY", "valueFrom": secret_arn}]
    if remote_write_url:  # the ADOT sidecar: metrics to AMP, traces to X-Ray (collector.py)
        return with_collector(container, settings.region, remote_write_url, log_group)
    return [container]


class Service(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, *, vpc_id: pulumi.Input[str],
                 private_subnet_ids: list[pulumi.Input[str]], image_url: pulumi.Input[str],
                 log_group_name: pulumi.Input[str], execution_role_arn: pulumi.Input[str],
                 task_role_arn: pulumi.Input[str], target_group_arn: pulumi.Input[str],
                 alb_security_group_id: pulumi.Input[str], listener: pulumi.Resource,
                 secret_arn: Optional[pulumi.Input[str]] = None,
                 capture_uri: Optional[pulumi.Input[str]] = None,
                 remote_write_url: Optional[pulumi.Input[str]] = None,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:service:Service", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)

        self.cluster = aws.ecs.Cluster(
            f"{name}-cluster", name=settings.prefix,
            settings=[{"name": "containerInsights", "value": "enabled"}],
            tags=settings.tags, opts=child)
        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-task-sg", name=f"{settings.prefix}-tasks", vpc_id=vpc_id,
            description="Tasks: container port from the ALB only; HTTPS out for AWS APIs",
            ingress=[{"protocol": "tcp", "from_port": CONTAINER_PORT, "to_port": CONTAINER_PORT,
                      "security_groups": [alb_security_group_id], "description": "from the ALB"}],
            egress=[{"protocol": "tcp", "from_port": 443, "to_port": 443, "cidr_blocks": ["0.0.0.0/0"],
                     "description": "ECR, CloudWatch Logs, Secrets Manager"}],
            tags=settings.tags, opts=child)

        definitions = pulumi.Output.all(image_url, log_group_name, secret_arn, capture_uri, remote_write_url).apply(
            lambda args: container_definitions(settings, *args))
        self.task_definition = aws.ecs.TaskDefinition(
            f"{name}-task", family=settings.prefix,
            requires_compatibilities=["FARGATE"], network_mode="awsvpc",
            cpu=str(settings.task_cpu), memory=str(settings.task_memory),
            runtime_platform={"operating_system_family": "LINUX", "cpu_architecture": "X86_64"},
            execution_role_arn=execution_role_arn, task_role_arn=task_role_arn,
            volumes=[{"name": TMP_VOLUME}],
            container_definitions=pulumi.Output.json_dumps(definitions),
            # Keep replaced revisions ACTIVE: `ops rollback` can only go back to an ACTIVE one.
            skip_destroy=True,
            tags=settings.tags, opts=child)

        self.service = aws.ecs.Service(
            f"{name}-service", name=settings.prefix, cluster=self.cluster.arn,
            task_definition=self.task_definition.arn, launch_type="FARGATE",
            platform_version="LATEST", desired_count=settings.min_capacity,
            deployment_minimum_healthy_percent=100, deployment_maximum_percent=200,
            deployment_circuit_breaker={"enable": True, "rollback": True},
            health_check_grace_period_seconds=HEALTH_CHECK_GRACE_SECONDS,
            network_configuration={"subnets": private_subnet_ids, "assign_public_ip": False,
                                   "security_groups": [self.security_group.id]},
            load_balancers=[{"target_group_arn": target_group_arn, "container_name": CONTAINER_NAME,
                             "container_port": CONTAINER_PORT}],
            propagate_tags="SERVICE", enable_ecs_managed_tags=True, tags=settings.tags,
            # `pulumi up` returns only once the deployment is steady (new tasks healthy in the target
            # group), so tasks that cannot pull or start fail the `up` instead of passing silently.
            wait_for_steady_state=True,
            # Auto scaling owns the desired count after creation; `pulumi up` must not reset it.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[listener],
                                        ignore_changes=["desiredCount"]))
        self.register_outputs({"clusterName": self.cluster.name, "serviceName": self.service.name})
