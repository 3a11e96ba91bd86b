"""Test kit for ops: a moto account holding what the Pulumi program creates, and a command runner
that records command lines and applies their AWS side effects (a push puts an image in ECR,
`pulumi up` creates the stack), since Docker and the Pulumi CLI cannot run in tests."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import boto3

from ops.aws import Aws
from ops.context import Context
from ops.errors import OpsError
from ops.runner import Completed
from ops.stack import CONTAINER_NAME, Stack, load_stack

BENTO_TAG = "xgboost_service:v3kq2hxa6sxyz"


def moto_session(region: str = "us-west-2") -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name=region)


def push_image(session: boto3.session.Session, stack: Stack, tag: str) -> str:
    """Put an image manifest in ECR, as `docker push` would; returns its digest."""
    manifest = json.dumps({"schemaVersion": 2, "tag": tag,
                           "mediaType": "application/vnd.docker.distribution.manifest.v2+json"})
    image = session.client("ecr").put_image(repositoryName=stack.repository, imageManifest=manifest,
                                            imageTag=tag)
    return image["image"]["imageId"]["imageDigest"]


def create_registry(session: boto3.session.Session, stack: Stack) -> str:
    repo = session.client("ecr").create_repository(
        repositoryName=stack.repository, imageTagMutability="IMMUTABLE",
        imageScanningConfiguration={"scanOnPush": True})
    return repo["repository"]["repositoryUri"]


def create_stack(session: boto3.session.Session, stack: Stack, image_tag: str,
                 min_capacity: int = 5, max_capacity: int = 20) -> dict:
    """What `pulumi up` leaves in the account, named as the program names it (ml-api-prod)."""
    ec2, elb, ecs = session.client("ec2"), session.client("elbv2"), session.client("ecs")
    ecr = session.client("ecr")
    try:
        repo_uri = ecr.describe_repositories(repositoryNames=[stack.repository])["repositories"][0]["repositoryUri"]
    except ecr.exceptions.RepositoryNotFoundException:
        repo_uri = create_registry(session, stack)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = [ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24",
                                 AvailabilityZone=f"{stack.region}{az}")["Subnet"]["SubnetId"]
               for i, az in enumerate("ab")]
    task_sg = ec2.create_security_group(GroupName=f"{stack.prefix}-tasks", Description="tasks",
                                        VpcId=vpc)["GroupId"]
    alb = elb.create_load_balancer(Name=stack.load_balancer, Subnets=subnets, Type="application",
                                   Scheme="internet-facing")["LoadBalancers"][0]
    tg = elb.create_target_group(Name=stack.target_group, Protocol="HTTP", Port=3000, VpcId=vpc,
                                 TargetType="ip", HealthCheckPath="/readyz")["TargetGroups"][0]
    elb.create_listener(LoadBalancerArn=alb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])
    ecs.create_cluster(clusterName=stack.cluster)
    session.client("logs").create_log_group(logGroupName=stack.log_group)
    task_def = ecs.register_task_definition(
        family=stack.prefix, requiresCompatibilities=["FARGATE"], networkMode="awsvpc",
        cpu="1024", memory="2048", executionRoleArn="arn:aws:iam::123456789012:role/ml-api-prod-execution",
        volumes=[{"name": "tmp"}],
        containerDefinitions=[{
            "name": CONTAINER_NAME, "image": f"{repo_uri}:{image_tag}", "essential": True,
            "user": "1034", "readonlyRootFilesystem": True, "stopTimeout": 45,
            "portMappings": [{"containerPort": 3000, "protocol": "tcp"}],
            "environment": [{"name": "XGB_WORKERS", "value": "1"}],
            "mountPoints": [{"sourceVolume": "tmp", "containerPath": "/tmp", "readOnly": False}],
            "logConfiguration": {"logDriver": "awslogs", "options": {
                "awslogs-group": stack.log_group, "awslogs-region": stack.region,
                "awslogs-stream-prefix": "api"}}}],
        tags=[{"key": "Project", "value": "ml-api"}])["taskDefinition"]
    service = ecs.create_service(
        cluster=stack.cluster, serviceName=stack.service, taskDefinition=task_def["taskDefinitionArn"],
        desiredCount=min_capacity, launchType="FARGATE",
        networkConfiguration={"awsvpcConfiguration": {"subnets": subnets, "securityGroups": [task_sg],
                                                     "assignPublicIp": "DISABLED"}},
        loadBalancers=[{"targetGroupArn": tg["TargetGroupArn"], "containerName": CONTAINER_NAME,
                        "containerPort": 3000}])["service"]
    session.client("application-autoscaling").register_scalable_target(
        ServiceNamespace="ecs", ResourceId=stack.scaling_resource_id,
        ScalableDimension="ecs:service:DesiredCount", MinCapacity=min_capacity, MaxCapacity=max_capacity)
    return {"repository_uri": repo_uri, "alb": alb, "target_group": tg, "service": service,
            "task_definition": task_def, "subnets": subnets}


@dataclass
class FakeRunner:
    """Records every command; `effects` maps a command-line prefix (program name without its
    directory) to a function that applies its effect and may return its output."""

    effects: dict[str, Callable[[list[str]], Optional[Completed]]] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)
    stdins: list[Optional[str]] = field(default_factory=list)
    envs: list[Optional[dict]] = field(default_factory=list)

    def __call__(self, cmd: Sequence[str], *, cwd=None, stdin=None, capture=False, check=True,
                 secret_stdin=False, env=None) -> Completed:
        cmd = list(cmd)
        self.commands.append(cmd)
        self.stdins.append(stdin)
        self.envs.append(env)
        line = self.line(cmd)
        for prefix, effect in self.effects.items():
            if line.startswith(prefix):
                result = effect(cmd) or Completed(0)
                if check and result.returncode != 0:
                    raise OpsError(f"`{shlex.join(cmd[:3])} ...` failed (exit {result.returncode})")
                return result
        return Completed(0)

    @staticmethod
    def line(cmd: Sequence[str]) -> str:
        """The command line with the program's directory dropped: `.venv/bin/bentoml x` -> `bentoml x`."""
        return shlex.join([Path(cmd[0]).name, *cmd[1:]])

    def lines(self) -> list[str]:
        return [self.line(c) for c in self.commands]


def make_context(session: boto3.session.Session, runner: FakeRunner, stack_name: str = "prod",
                 **kwargs) -> tuple[Context, list[str]]:
    """A Context on moto whose output goes to the returned list; no real sleeping."""
    printed: list[str] = []
    stack = load_stack(stack_name)
    ctx = Context(stack=stack, aws=Aws(stack.region, session), run=runner, echo=printed.append,
                  sleep=lambda _s: None, poll_seconds=0, **kwargs)
    return ctx, printed
