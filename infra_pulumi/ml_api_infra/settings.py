"""Stack configuration: every knob of the deployment, read from `pulumi config` with defaults.

The defaults are the seed's production values (terraform.tfvars), so `Pulumi.prod.yaml` only
restates them; another stack (say `staging`) overrides what differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pulumi

# Fargate accepts only these memory sizes (MiB) for each CPU size (units of 1/1024 vCPU).
FARGATE_MEMORY_BY_CPU = {
    256: range(512, 2049, 512),
    512: range(1024, 4097, 1024),
    1024: range(2048, 8193, 1024),
    2048: range(4096, 16385, 1024),
    4096: range(8192, 30721, 1024),
}
CONTAINER_PORT = 3000


class SettingsError(ValueError):
    """A stack config value is invalid; the message names the `pulumi config` key."""


@dataclass(frozen=True)
class StackSettings:
    project: str = "ml-api"
    environment: str = "prod"
    region: str = "us-west-2"
    # Scaling (Application Auto Scaling owns the desired count between these bounds).
    min_capacity: int = 5
    max_capacity: int = 20
    cpu_target: float = 70.0
    memory_target: float = 80.0
    # ALBRequestCountPerTarget is requests per task per minute; 3000/min = 50 req/s per task,
    # well below a 1-vCPU task's measured capacity so CPU tracking is rarely the late signal.
    requests_per_target: int = 3000
    scale_out_cooldown: int = 60
    scale_in_cooldown: int = 300
    # Task size
    task_cpu: int = 1024
    task_memory: int = 2048
    image_tag: str = "initial"
    # Service environment
    xgb_workers: int = 1
    range_check: str = "warn"
    cors_origins: str = ""
    model_tag: str = ""
    api_key: Optional[pulumi.Output] = field(default=None, compare=False)
    # Edge
    certificate_arn: str = ""
    waf_rate_limit: int = 2000  # requests per 5 minutes per client IP
    # Network
    vpc_cidr: str = "10.0.0.0/16"
    az_count: int = 2
    nat_per_az: bool = False
    # Registry and observability
    images_to_keep: int = 30
    log_retention_days: int = 30
    alarm_email: str = ""
    p99_latency_threshold_seconds: float = 1.0
    force_delete_images: bool = False

    @property
    def prefix(self) -> str:
        """Physical-name prefix, e.g. `ml-api-prod` (cluster, service, log group, repository)."""
        return f"{self.project}-{self.environment}"

    @property
    def tags(self) -> dict[str, str]:
        return {"Project": self.project, "Environment": self.environment, "ManagedBy": "pulumi"}

    def validate(self) -> "StackSettings":
        def fail(key: str, why: str) -> None:
            raise SettingsError(f"pulumi config ml-api:{key}: {why}")

        if self.min_capacity < 1:
            fail("minCapacity", f"must be at least 1, got {self.min_capacity}")
        if self.max_capacity < self.min_capacity:
            fail("maxCapacity", f"{self.max_capacity} is below minCapacity {self.min_capacity}")
        for key, value in (("cpuTarget", self.cpu_target), ("memoryTarget", self.memory_target)):
            if not 0 < value <= 100:
                fail(key, f"a utilisation percentage in (0, 100], got {value}")
        if self.task_cpu not in FARGATE_MEMORY_BY_CPU:
            fail("taskCpu", f"Fargate CPU sizes are {sorted(FARGATE_MEMORY_BY_CPU)}, got {self.task_cpu}")
        if self.task_memory not in FARGATE_MEMORY_BY_CPU[self.task_cpu]:
            allowed = FARGATE_MEMORY_BY_CPU[self.task_cpu]
            fail("taskMemory", f"with taskCpu {self.task_cpu} Fargate allows "
                               f"{allowed.start}..{allowed.stop - 1} MiB in steps of {allowed.step}, "
                               f"got {self.task_memory}")
        if self.xgb_workers < 1:
            fail("xgbWorkers", f"must be at least 1, got {self.xgb_workers}")
        if self.range_check not in ("warn", "reject", "off"):
            fail("rangeCheck", f"one of warn|reject|off, got {self.range_check!r}")
        if self.az_count < 2:
            fail("azCount", f"an ALB needs subnets in at least 2 AZs, got {self.az_count}")
        if not self.image_tag:
            fail("imageTag", "must not be empty")
        return self


def load_settings() -> StackSettings:
    """Read `ml-api:*` (and `aws:region`) stack config, falling back to the defaults above."""
    cfg = pulumi.Config()
    aws_cfg = pulumi.Config("aws")
    d = StackSettings()

    def pick(value, default):
        return default if value is None else value

    return StackSettings(
        project=pick(cfg.get("project"), d.project),
        environment=pick(cfg.get("environment"), d.environment),
        region=pick(aws_cfg.get("region"), d.region),
        min_capacity=pick(cfg.get_int("minCapacity"), d.min_capacity),
        max_capacity=pick(cfg.get_int("maxCapacity"), d.max_capacity),
        cpu_target=pick(cfg.get_float("cpuTarget"), d.cpu_target),
        memory_target=pick(cfg.get_float("memoryTarget"), d.memory_target),
        requests_per_target=pick(cfg.get_int("requestsPerTarget"), d.requests_per_target),
        scale_out_cooldown=pick(cfg.get_int("scaleOutCooldown"), d.scale_out_cooldown),
        scale_in_cooldown=pick(cfg.get_int("scaleInCooldown"), d.scale_in_cooldown),
        task_cpu=pick(cfg.get_int("taskCpu"), d.task_cpu),
        task_memory=pick(cfg.get_int("taskMemory"), d.task_memory),
        image_tag=pick(cfg.get("imageTag"), d.image_tag),
        xgb_workers=pick(cfg.get_int("xgbWorkers"), d.xgb_workers),
        range_check=pick(cfg.get("rangeCheck"), d.range_check),
        cors_origins=pick(cfg.get("corsOrigins"), d.cors_origins),
        model_tag=pick(cfg.get("modelTag"), d.model_tag),
        api_key=cfg.get_secret("apiKey"),
        certificate_arn=pick(cfg.get("certificateArn"), d.certificate_arn),
        waf_rate_limit=pick(cfg.get_int("wafRateLimit"), d.waf_rate_limit),
        vpc_cidr=pick(cfg.get("vpcCidr"), d.vpc_cidr),
        az_count=pick(cfg.get_int("azCount"), d.az_count),
        nat_per_az=pick(cfg.get_bool("natPerAz"), d.nat_per_az),
        images_to_keep=pick(cfg.get_int("imagesToKeep"), d.images_to_keep),
        log_retention_days=pick(cfg.get_int("logRetentionDays"), d.log_retention_days),
        alarm_email=pick(cfg.get("alarmEmail"), d.alarm_email),
        p99_latency_threshold_seconds=pick(cfg.get_float("p99LatencyThreshold"),
                                           d.p99_latency_threshold_seconds),
        force_delete_images=pick(cfg.get_bool("forceDeleteImages"), d.force_delete_images),
    ).validate()
