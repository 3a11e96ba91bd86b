"""Stack configuration: every knob of the deployment, read from `pulumi config` with defaults.

The defaults are the seed's production values (terraform.tfvars), so `Pulumi.prod.yaml` only
restates them; another stack (say `staging`) overrides what differs.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Optional

import pulumi

GIB = 1024
# Fargate's task sizes: memory (MiB) allowed for each CPU size (units of 1/1024 vCPU), AWS's table
# https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html#fargate-tasks-size
FARGATE_MEMORY_BY_CPU = {
    256: (512, 1 * GIB, 2 * GIB),
    512: tuple(range(1 * GIB, 4 * GIB + 1, GIB)),
    1024: tuple(range(2 * GIB, 8 * GIB + 1, GIB)),
    2048: tuple(range(4 * GIB, 16 * GIB + 1, GIB)),
    4096: tuple(range(8 * GIB, 30 * GIB + 1, GIB)),
    8192: tuple(range(16 * GIB, 60 * GIB + 1, 4 * GIB)),
    16384: tuple(range(32 * GIB, 120 * GIB + 1, 8 * GIB)),
}
# The target's keep-alive must outlast the ALB's idle timeout, or the task closes a connection the
# ALB is about to reuse and the client gets a 502 (AWS: "Connection idle timeout").
KEEP_ALIVE_MARGIN_SECONDS = 15
# The ALB waits this much beyond the request timeout before it drops a draining target, so a
# request that started just before deregistration still finishes.
DEREGISTRATION_MARGIN_SECONDS = 10
# The service's request timeout (serving/settings.py request_timeout_s, XGB_REQUEST_TIMEOUT_S).
SERVICE_REQUEST_TIMEOUT_SECONDS = 30
MODEL_PREFIX = "models"  # objects under s3://<modelBucket>/models/xgb_classifier/<version>
CONTAINER_PORT = 3000
DEFAULT_REGION = "us-west-2"
# AWS WAF's bounds for a rate-based rule's limit (requests per evaluation window per key).
WAF_RATE_LIMIT_RANGE = (10, 2_000_000_000)


def default_region() -> str:
    """Where the AWS provider deploys when the stack sets no `aws:region`: the environment's region
    (AWS_REGION, then AWS_DEFAULT_REGION), else us-west-2. `python -m ops` resolves it the same way."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


class SettingsError(ValueError):
    """A stack config value is invalid; the message names the `pulumi config` key."""


@dataclass(frozen=True)
class StackSettings:
    project: str = "ml-api"
    environment: str = "prod"
    region: str = DEFAULT_REGION
    # Scaling (Application Auto Scaling owns the desired count between these bounds).
    min_capacity: int = 5
    max_capacity: int = 20
    cpu_target: float = 70.0
    memory_target: float = 80.0
    # ALBRequestCountPerTarget is requests per task per minute. The benchmark measures ~4,500-5,100
    # req/s of /predict per fully used core on a 2-core test box (docs/performance.md); a Fargate
    # vCPU (one hyperthread) at the 70 % CPU target is taken as ~1,500-2,500 req/s until measured
    # on a real task. 60,000/min = 1,000 req/s per task adds tasks before CPU tracking would.
    requests_per_target: int = 60_000
    scale_out_cooldown: int = 60
    scale_in_cooldown: int = 300
    # Task size
    task_cpu: int = 1024
    task_memory: int = 2048
    # Empty: `pulumi up` builds the Bento and its image and pushes it to the stack's ECR (image.py).
    # Set (by `ops update`/`ops rollback`, or by hand): the service runs that tag from the repository.
    image_tag: str = ""
    # Service environment
    xgb_workers: int = 1
    range_check: str = "warn"
    cors_origins: str = ""
    model_tag: str = ""
    # Candidate model next to the primary (the service reads XGB_CANDIDATE_TAG/MODE/PERCENT and
    # checks their values); passed through to the task only when set.
    candidate_tag: str = ""
    candidate_mode: str = ""
    candidate_percent: float = 10.0  # the service's default (XGB_CANDIDATE_PERCENT)
    shadow_min_agreement: Optional[float] = None  # XGB_SHADOW_MIN_AGREEMENT; None: the service's default
    # Capture of the answered records (serving/capture.py): the percent captured (0: off, no bucket)
    # and how long the capture bucket keeps them.
    capture_percent: float = 0.0
    capture_retention_days: int = 90
    trace_sample: Optional[float] = None  # XGB_TRACE_SAMPLE; None: the service's default (1 %)
    api_key: Optional[pulumi.Output] = field(default=None, compare=False)
    # Edge. With domain_name + hosted_zone_id the program issues an ACM certificate validated in
    # that Route 53 zone and points the name at the ALB; certificate_arn uses an existing certificate
    # for domain_name instead.
    domain_name: str = ""
    hosted_zone_id: str = ""
    certificate_arn: str = ""
    # Requests per 5 minutes per client IP from clients WITHOUT a valid X-API-Key (anonymous abuse);
    # requests carrying the stack's key are not counted by it (they are limited per key by
    # waf_key_rate_limit). 100,000 / 5 min per IP ≈ 333 req/s: one NAT of a client fleet fits.
    waf_rate_limit: int = 100_000
    # Requests per 5 minutes per X-API-Key value (aggregated on the header); 0 turns it off.
    waf_key_rate_limit: int = 2_000_000
    # WAF logs to CloudWatch Logs only requests it BLOCKed or COUNTed; "all" logs every request.
    waf_log: str = "blocked"
    load_test_cidrs: tuple[str, ...] = ()
    # ALB deletion protection; None means "on for the prod environment".
    deletion_protection: Optional[bool] = None
    # Network
    vpc_cidr: str = "10.0.0.0/16"
    az_count: int = 2
    nat_per_az: bool = False
    # Registry and observability
    images_to_keep: int = 30
    log_retention_days: int = 30
    # ALB: idle timeout (the task's keep-alive is derived from it) and access logs to S3.
    alb_idle_timeout: int = 60
    alb_access_logs: bool = True
    # Models served from S3 without a new image: the bucket (default <prefix>-models-<account>)
    # and the URIs `python -m ops publish-model` prints.
    model_bucket: str = ""
    model_uri: str = ""
    candidate_uri: str = ""
    alarm_email: str = ""
    p99_latency_threshold_seconds: float = 1.0
    force_delete_images: bool = False

    @property
    def prefix(self) -> str:
        """Physical-name prefix, e.g. `ml-api-prod` (cluster, service, log group, repository)."""
        return f"{self.project}-{self.environment}"

    @property
    def alb_deletion_protection(self) -> bool:
        if self.deletion_protection is None:
            return self.environment == "prod"
        return self.deletion_protection

    @property
    def keep_alive_seconds(self) -> int:
        """The service's keep-alive (`bentoml serve --timeout-keep-alive`), derived from the ALB's."""
        return self.alb_idle_timeout + KEEP_ALIVE_MARGIN_SECONDS

    @property
    def deregistration_delay_seconds(self) -> int:
        return SERVICE_REQUEST_TIMEOUT_SECONDS + DEREGISTRATION_MARGIN_SECONDS

    @property
    def https(self) -> bool:
        return bool(self.domain_name)

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
            allowed = ", ".join(str(m) for m in FARGATE_MEMORY_BY_CPU[self.task_cpu])
            fail("taskMemory", f"with taskCpu {self.task_cpu} Fargate allows {allowed} MiB, "
                               f"got {self.task_memory}")
        if self.xgb_workers < 1:
            fail("xgbWorkers", f"must be at least 1, got {self.xgb_workers}")
        if self.range_check not in ("warn", "reject", "off"):
            fail("rangeCheck", f"one of warn|reject|off, got {self.range_check!r}")
        if self.az_count < 2:
            fail("azCount", f"an ALB needs subnets in at least 2 AZs, got {self.az_count}")
        if self.certificate_arn and not self.domain_name:
            fail("certificateArn", "needs domainName, the name the certificate covers (the ALB's own "
                                   "DNS name cannot be on a certificate)")
        if self.hosted_zone_id and not self.domain_name:
            fail("hostedZoneId", "needs domainName, the record to create in that zone")
        if self.domain_name and not (self.hosted_zone_id or self.certificate_arn):
            fail("domainName", "needs hostedZoneId (to issue and validate a certificate in Route 53) "
                               "or certificateArn (an issued certificate for that name)")
        low, high = WAF_RATE_LIMIT_RANGE
        if not low <= self.waf_rate_limit <= high:
            fail("wafRateLimit", f"AWS WAF accepts {low}..{high} requests per 5 minutes, got {self.waf_rate_limit}")
        if self.waf_key_rate_limit and not low <= self.waf_key_rate_limit <= high:
            fail("wafKeyRateLimit", f"0 (off) or {low}..{high} requests per 5 minutes, got {self.waf_key_rate_limit}")
        if self.waf_log not in ("blocked", "all"):
            fail("wafLog", f"one of blocked|all, got {self.waf_log!r}")
        if not 1 <= self.alb_idle_timeout <= 4000:
            fail("albIdleTimeout", f"the ALB accepts 1..4000 seconds, got {self.alb_idle_timeout}")
        for key, uri in (("modelUri", self.model_uri), ("candidateUri", self.candidate_uri)):
            if uri and not re.fullmatch(r"s3://[a-z0-9.\-]{3,63}/\S+/xgb_classifier/[A-Za-z0-9_.\-]+", uri):
                fail(key, f"an s3://bucket/prefix/xgb_classifier/<version> URI (`python -m ops publish-model` "
                          f"prints one), got {uri!r}")
        if self.candidate_uri and self.candidate_tag:
            fail("candidateUri", "set candidateUri or candidateTag, not both")
        for cidr in self.load_test_cidrs:
            try:
                network = ipaddress.ip_network(cidr)
            except ValueError:
                fail("loadTestCidrs", f"{cidr!r} is not a CIDR block (e.g. 203.0.113.7/32)")
            if network.version != 4:
                fail("loadTestCidrs", f"{cidr!r}: only IPv4 blocks (the ALB listens on IPv4)")
        if not 0 <= self.candidate_percent <= 100:
            fail("candidatePercent", f"a percentage in [0, 100], got {self.candidate_percent}")
        if self.candidate_mode not in ("", "shadow", "canary"):
            fail("candidateMode", f"one of shadow|canary, got {self.candidate_mode!r}")
        if self.shadow_min_agreement is not None and not 0 <= self.shadow_min_agreement <= 1:
            fail("shadowMinAgreement", f"a share in [0, 1], got {self.shadow_min_agreement}")
        if not 0 <= self.capture_percent <= 100:
            fail("capturePercent", f"a percentage in [0, 100] (0: off), got {self.capture_percent}")
        if self.capture_retention_days < 1:
            fail("captureRetentionDays", f"must be at least 1, got {self.capture_retention_days}")
        if self.trace_sample is not None and not 0 <= self.trace_sample <= 1:
            fail("traceSample", f"a share of requests in [0, 1], got {self.trace_sample}")
        return self


# `ml-api:<key>` in the stack config -> (StackSettings field, pulumi.Config getter). `apiKey` is
# read as a secret separately. Pulumi ignores keys nobody reads, so the tests check every key in
# Pulumi.<stack>.yaml against this table: a typo fails instead of silently using a default.
CONFIG_KEYS = {
    "project": ("project", "get"),
    "environment": ("environment", "get"),
    "minCapacity": ("min_capacity", "get_int"),
    "maxCapacity": ("max_capacity", "get_int"),
    "cpuTarget": ("cpu_target", "get_float"),
    "memoryTarget": ("memory_target", "get_float"),
    "requestsPerTarget": ("requests_per_target", "get_int"),
    "scaleOutCooldown": ("scale_out_cooldown", "get_int"),
    "scaleInCooldown": ("scale_in_cooldown", "get_int"),
    "taskCpu": ("task_cpu", "get_int"),
    "taskMemory": ("task_memory", "get_int"),
    "imageTag": ("image_tag", "get"),
    "candidateTag": ("candidate_tag", "get"),
    "candidateMode": ("candidate_mode", "get"),
    "candidatePercent": ("candidate_percent", "get_float"),
    "shadowMinAgreement": ("shadow_min_agreement", "get_float"),
    "traceSample": ("trace_sample", "get_float"),
    "xgbWorkers": ("xgb_workers", "get_int"),
    "rangeCheck": ("range_check", "get"),
    "corsOrigins": ("cors_origins", "get"),
    "modelTag": ("model_tag", "get"),
    "domainName": ("domain_name", "get"),
    "hostedZoneId": ("hosted_zone_id", "get"),
    "certificateArn": ("certificate_arn", "get"),
    "wafRateLimit": ("waf_rate_limit", "get_int"),
    "wafKeyRateLimit": ("waf_key_rate_limit", "get_int"),
    "wafLog": ("waf_log", "get"),
    "loadTestCidrs": ("load_test_cidrs", "get_object"),
    "deletionProtection": ("deletion_protection", "get_bool"),
    "vpcCidr": ("vpc_cidr", "get"),
    "azCount": ("az_count", "get_int"),
    "natPerAz": ("nat_per_az", "get_bool"),
    "imagesToKeep": ("images_to_keep", "get_int"),
    "logRetentionDays": ("log_retention_days", "get_int"),
    "albIdleTimeout": ("alb_idle_timeout", "get_int"),
    "albAccessLogs": ("alb_access_logs", "get_bool"),
    "modelBucket": ("model_bucket", "get"),
    "modelUri": ("model_uri", "get"),
    "candidateUri": ("candidate_uri", "get"),
    "alarmEmail": ("alarm_email", "get"),
    "p99LatencyThreshold": ("p99_latency_threshold_seconds", "get_float"),
    "forceDeleteImages": ("force_delete_images", "get_bool"),
    "capturePercent": ("capture_percent", "get_float"),
    "captureRetentionDays": ("capture_retention_days", "get_int"),
}
SECRET_KEYS = ("apiKey",)


def load_settings() -> StackSettings:
    """Read `ml-api:*` (and `aws:region`) stack config, falling back to the defaults above."""
    cfg = pulumi.Config()
    values = {}
    for key, (field_name, getter) in CONFIG_KEYS.items():
        value = getattr(cfg, getter)(key)
        if value is not None:
            values[field_name] = tuple(value) if isinstance(value, list) else value
    values["region"] = pulumi.Config("aws").get("region") or default_region()
    return StackSettings(**values, api_key=cfg.get_secret("apiKey")).validate()
