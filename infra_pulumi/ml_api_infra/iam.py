"""Task execution role (pull the image, write logs, read the API key) and task role (nothing).

Least privilege: every statement names its actions, and every resource is the one ARN it needs,
except ecr:GetAuthorizationToken, which AWS only grants on "*".
"""

from __future__ import annotations

import json
from typing import Optional

import pulumi
import pulumi_aws as aws

from .settings import StackSettings

ECS_TASKS_PRINCIPAL = "ecs-tasks.amazonaws.com"


def assume_role_policy(account_id: str) -> str:
    # aws:SourceAccount stops another account's ECS from assuming the role (confused deputy).
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": ECS_TASKS_PRINCIPAL}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account_id}}}]})


def execution_policy(repository_arn: str, log_group_arn: str, secret_arn: Optional[str]) -> str:
    statements = [
        {"Sid": "EcrAuth", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken"], "Resource": "*"},
        {"Sid": "EcrPull", "Effect": "Allow",
         "Action": ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"],
         "Resource": repository_arn},
        {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
         "Resource": f"{log_group_arn}:log-stream:*"},
    ]
    if secret_arn:
        statements.append({"Sid": "ApiKey", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"],
                           "Resource": secret_arn})
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


class TaskRoles(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, *, repository_arn: pulumi.Input[str],
                 log_group_arn: pulumi.Input[str], secret_arn: Optional[pulumi.Input[str]] = None,
                 model_bucket: Optional[pulumi.Input[str]] = None, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:iam:TaskRoles", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        account_id = aws.get_caller_identity_output().account_id
        trust = account_id.apply(assume_role_policy)

        self.execution_role = aws.iam.Role(
            f"{name}-execution", name=f"{settings.prefix}-execution",
            description="ECS agent: pull the image, ship logs, read the API key",
            assume_role_policy=trust, tags=settings.tags, opts=child)
        aws.iam.RolePolicy(
            f"{name}-execution", role=self.execution_role.id,
            policy=pulumi.Output.all(repository_arn, log_group_arn, secret_arn).apply(
                lambda arns: execution_policy(*arns)),
            opts=child)
        # The service reads published models (MODEL_URI) at start and writes captured records
        # (capture.py); its ADOT sidecar writes metrics and traces (managed_prometheus.py).
        self.task_role = aws.iam.Role(
            f"{name}-task", name=f"{settings.prefix}-task",
            description="The task: reads published models, writes captured records; its ADOT sidecar writes to AMP and X-Ray",
            assume_role_policy=trust, tags=settings.tags, opts=child)
        if model_bucket is not None:
            from .models import model_read_policy

            aws.iam.RolePolicy(f"{name}-task-models", role=self.task_role.id,
                               policy=pulumi.Output.from_input(model_bucket).apply(model_read_policy), opts=child)
        self.register_outputs({"executionRoleArn": self.execution_role.arn,
                               "taskRoleArn": self.task_role.arn})
