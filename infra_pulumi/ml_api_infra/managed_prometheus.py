"""Amazon Managed Service for Prometheus: the workspace the ADOT sidecar writes to (collector.py),
the rules of monitoring/rules/*.yml, and an alert manager that sends their alerts to SNS.

One source: the rule groups are the rule files as they are, and the alert manager's routes and
inhibitions are monitoring/alertmanager.yml's, with every receiver sending to the SNS topic instead
of a webhook. The task role may write to this workspace and send traces to X-Ray, nothing more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import yaml

from .collector import REPO_DIR
from .settings import StackSettings

RULES_DIR = REPO_DIR / "monitoring" / "rules"
ALERTMANAGER_CONFIG = REPO_DIR / "monitoring" / "alertmanager.yml"
APS_PRINCIPAL = "aps.amazonaws.com"
# X-Ray's trace APIs have no resource-level permissions: AWS only grants them on "*".
XRAY_ACTIONS = ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]


def rule_files() -> dict[str, str]:
    """Rule file stem -> its text, as the local Prometheus loads them (prometheus.yml: rules/*.yml)."""
    return {path.stem: path.read_text() for path in sorted(RULES_DIR.glob("*.yml"))}


def alert_manager_definition(topic_arn: str, region: str) -> str:
    """AMP's alert manager definition: alertmanager.yml's routing, every receiver publishing to SNS."""
    local = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    receivers = []
    for receiver in local["receivers"]:
        send_resolved = all(w.get("send_resolved", True) for w in receiver.get("webhook_configs", []))
        receivers.append({"name": receiver["name"], "sns_configs": [{
            "topic_arn": topic_arn, "sigv4": {"region": region}, "send_resolved": send_resolved,
            "subject": "[{{ .Status | toUpper }}] {{ .CommonLabels.alertname }} ({{ .CommonLabels.severity }})",
            "attributes": {"receiver": receiver["name"]}}]})
    config: dict[str, Any] = {"route": local["route"], "inhibit_rules": local.get("inhibit_rules", []),
                              "receivers": receivers}
    if "global" in local:
        config["global"] = {k: v for k, v in local["global"].items() if k == "resolve_timeout"}
    return yaml.safe_dump({"alertmanager_config": yaml.safe_dump(config, sort_keys=False)}, sort_keys=False)


def topic_policy(topic_arn: str, account_id: str, workspace_arn: str) -> str:
    """The account may use the topic; AMP may publish to it for this workspace only."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "AccountOwner", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account_id}:root"},
         "Action": ["SNS:GetTopicAttributes", "SNS:SetTopicAttributes", "SNS:Subscribe",
                    "SNS:ListSubscriptionsByTopic", "SNS:Publish"], "Resource": topic_arn},
        {"Sid": "ManagedPrometheusAlerts", "Effect": "Allow", "Principal": {"Service": APS_PRINCIPAL},
         "Action": ["sns:Publish", "sns:GetTopicAttributes"], "Resource": topic_arn,
         "Condition": {"ArnEquals": {"aws:SourceArn": workspace_arn},
                       "StringEquals": {"aws:SourceAccount": account_id}}},
    ]})


def task_policy(workspace_arn: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "RemoteWrite", "Effect": "Allow", "Action": ["aps:RemoteWrite"], "Resource": workspace_arn},
        {"Sid": "Traces", "Effect": "Allow", "Action": XRAY_ACTIONS, "Resource": "*"},
    ]})


class ManagedPrometheus(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, *, task_role_name: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:observability:ManagedPrometheus", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.workspace = aws.amp.Workspace(f"{name}-amp", alias=settings.prefix, tags=settings.tags, opts=child)
        self.remote_write_url = pulumi.Output.concat(self.workspace.prometheus_endpoint, "api/v1/remote_write")
        self.rule_groups = {
            stem: aws.amp.RuleGroupNamespace(f"{name}-rules-{stem}", name=stem, workspace_id=self.workspace.id,
                                             data=text, tags=settings.tags, opts=child)
            for stem, text in rule_files().items()}

        self.topic = aws.sns.Topic(f"{name}-prometheus-alerts", name=f"{settings.prefix}-prometheus-alerts",
                                   tags=settings.tags, opts=child)
        if settings.alarm_email:
            aws.sns.TopicSubscription(f"{name}-prometheus-alerts-email", topic=self.topic.arn,
                                      protocol="email", endpoint=settings.alarm_email, opts=child)
        policy = aws.sns.TopicPolicy(
            f"{name}-prometheus-alerts", arn=self.topic.arn,
            policy=pulumi.Output.all(self.topic.arn, aws.get_caller_identity_output().account_id,
                                     self.workspace.arn).apply(lambda a: topic_policy(*a)),
            opts=child)
        self.alert_manager = aws.amp.AlertManagerDefinition(
            f"{name}-alertmanager", workspace_id=self.workspace.id,
            definition=self.topic.arn.apply(lambda arn: alert_manager_definition(arn, settings.region)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[policy]))

        self.task_policy = aws.iam.RolePolicy(
            f"{name}-task-telemetry", role=task_role_name,
            policy=self.workspace.arn.apply(task_policy), opts=child)
        self.register_outputs({"workspaceId": self.workspace.id, "remoteWriteUrl": self.remote_write_url,
                               "alertTopicArn": self.topic.arn})
