"""The stack configuration table of docs/deployment.md, generated from settings.py (keys, defaults)
and the descriptions below, so the documented defaults are the code's.

    .venv/bin/python infra_pulumi/ml_api_infra/config_docs.py --write    # rewrite the table
A test fails when the document's table differs from what this renders.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from ml_api_infra.settings import CONFIG_KEYS, SECRET_KEYS, StackSettings
else:
    from .settings import CONFIG_KEYS, SECRET_KEYS, StackSettings

DOC = Path(__file__).resolve().parent.parent.parent / "docs" / "deployment.md"
BEGIN = "<!-- config:table (python infra_pulumi/ml_api_infra/config_docs.py --write) -->"
END = "<!-- /config:table -->"

DESCRIPTIONS = {
    "project": "resource names are `<project>-<environment>`",
    "environment": "`prod` also turns on ALB deletion protection",
    "minCapacity": "autoscaling floor; the service starts here (tasks spread over the AZs)",
    "maxCapacity": "autoscaling ceiling",
    "cpuTarget": "target tracking on average CPU, percent",
    "memoryTarget": "target tracking on average memory, percent",
    "requestsPerTarget": "target tracking on ALB requests per task per **minute** (60,000 = 1,000 req/s)",
    "scaleOutCooldown": "seconds after a scale-out before the next",
    "scaleInCooldown": "seconds after a scale-in before the next",
    "taskCpu": "CPU units (1024 = 1 vCPU), checked against Fargate's sizes",
    "taskMemory": "MiB, checked against Fargate's pairs for `taskCpu`",
    "imageTag": "unset: `pulumi up` builds and pushes this checkout; set (by `ops update`/`ops rollback`, "
                "or by hand): run that tag from ECR",
    "candidateTag": "candidate model next to the primary: `XGB_CANDIDATE_TAG`",
    "candidateMode": "`XGB_CANDIDATE_MODE` (with `candidateTag`)",
    "candidatePercent": "`XGB_CANDIDATE_PERCENT` (with `candidateTag`), 0-100",
    "shadowMinAgreement": "`XGB_SHADOW_MIN_AGREEMENT` (with `candidateTag`): the shadow agreement alert's level, 0-1",
    "traceSample": "`XGB_TRACE_SAMPLE`: share of requests traced to X-Ray (through the ADOT sidecar), 0-1; 0 turns tracing off",
    "xgbWorkers": "worker processes per task (one per vCPU)",
    "rangeCheck": "`XGB_RANGE_CHECK`: warn, reject or off",
    "corsOrigins": "`XGB_CORS_ORIGINS`",
    "modelTag": "`MODEL_TAG`: serve this model version from the image",
    "domainName": "serve HTTPS on this name (needs `hostedZoneId` or `certificateArn`); the `url` output",
    "hostedZoneId": "Route 53 zone of `domainName`: ACM certificate validated there, alias record to the ALB",
    "certificateArn": "an issued ACM certificate for `domainName`, instead of issuing one",
    "wafRateLimit": "WAF: requests per 5 minutes per client IP without a valid `X-API-Key` (≈ 333 req/s) before blocking",
    "wafKeyRateLimit": "WAF: requests per 5 minutes per `X-API-Key` value (aggregated on the header); 0: off",
    "wafLog": "WAF logs to CloudWatch Logs: `blocked` (only BLOCK and COUNT) or `all` (every request: costly)",
    "loadTestCidrs": "IPv4 CIDRs the rate limit skips (list: `pulumi config set --path 'loadTestCidrs[0]' "
                     "203.0.113.7/32`)",
    "deletionProtection": "ALB deletion protection; unset: on when `environment` is prod",
    "vpcCidr": "the VPC's block, split into public and private subnets",
    "azCount": "availability zones (at least 2)",
    "natPerAz": "one NAT gateway per AZ instead of one",
    "imagesToKeep": "ECR lifecycle: newest images kept",
    "logRetentionDays": "CloudWatch log groups and ALB access logs (S3) expire after this many days",
    "albIdleTimeout": "ALB idle timeout, seconds; the task's keep-alive is this + 15",
    "albAccessLogs": "ALB access logs to an S3 bucket that expires them",
    "modelBucket": "S3 bucket of published models; unset: `<prefix>-models-<account id>` (created by the stack)",
    "modelUri": "`MODEL_URI`: serve this published model (`ops publish-model` prints it) instead of the image's",
    "candidateUri": "`CANDIDATE_MODEL_URI`: the candidate model from S3 (with `candidateMode`/`candidatePercent`)",
    "alarmEmail": "subscribe this address to the alarm topic",
    "p99LatencyThreshold": "seconds of p99 latency that raise the alarm",
    "forceDeleteImages": "`pulumi destroy` drops a non-empty repository (`ops destroy` empties it anyway)",
    "capturePercent": "`XGB_CAPTURE`: percent of answered records captured to the stack's capture bucket (0: off, no bucket; docs/capture.md)",
    "captureRetentionDays": "the capture bucket expires captured records after this many days",
    "apiKey": "secret (`pulumi config set --secret apiKey ...`): `/predict*` need `X-API-Key`",
}


def default_text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[]" if not value else ", ".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if value != "" else "-"


def render() -> str:
    defaults = {f.name: f.default for f in dataclasses.fields(StackSettings)}
    rows = ["| key (`pulumi config set <key> <value>`) | default | meaning |", "| --- | --- | --- |",
            "| `aws:region` | us-west-2 (unset: `$AWS_REGION`, then `$AWS_DEFAULT_REGION`) | where the stack lives |"]
    for key, (field_name, _getter) in CONFIG_KEYS.items():
        rows.append(f"| `{key}` | {default_text(defaults[field_name])} | {DESCRIPTIONS[key]} |")
    for key in SECRET_KEYS:
        rows.append(f"| `{key}` | - | {DESCRIPTIONS[key]} |")
    return "\n".join(rows)


def current_table(text: str) -> str:
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")


def write() -> None:
    text = DOC.read_text()
    head, rest = text.split(BEGIN, 1)
    DOC.write_text(f"{head}{BEGIN}\n{render()}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        print(render())
    else:
        write()
