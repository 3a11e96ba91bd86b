"""Test kit for ops: a moto account holding what the Pulumi program creates, a command runner that
records command lines and applies their AWS side effects (a push puts an image in ECR), and a fake
`pulumi` that behaves as the engine does for this program (`FakePulumi`), since Docker and the
Pulumi CLI cannot run in tests."""

from __future__ import annotations

import functools
import hashlib
import json
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import boto3

from ops.aws import Aws
from ops.context import Context
from ops.errors import OpsError
from ops.runner import Completed
from ops.stack import CONTAINER_NAME, INFRA_DIR, PROJECT, Stack, load_stack, urn_selected

BENTO_TAG = "xgboost_service:v3kq2hxa6sxyz"


def moto_session(region: str = "us-west-2") -> boto3.session.Session:
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                 region_name=region)


def push_image(session: boto3.session.Session, stack: Stack, tag: str) -> str:
    """Put an image manifest in ECR, as `docker push` would; returns its digest.

    The manifest has a layer of its own per tag: moto derives the digest from the layers, and for a
    manifest without any it picks one of only 101 digests at random, so two images could share one
    (and `batch_delete_image` by digest then deleted both)."""
    layer = {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 1,
             "digest": "sha256:" + hashlib.sha256(f"{stack.repository}:{tag}".encode()).hexdigest()}
    manifest = json.dumps({"schemaVersion": 2, "tag": tag, "layers": [layer],
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


@functools.lru_cache(maxsize=None)
def program_urns(stack_name: str = "prod") -> tuple[str, ...]:
    """The URNs the real Pulumi program declares for the committed stack config (under mocks)."""
    sys.path.insert(0, str(INFRA_DIR))
    from ml_api_infra.mocks import run_program, stack_config

    return tuple(run_program(stack_config(stack_name), stack=stack_name).urns)


def urn_type(urn: str) -> str:
    """`urn:pulumi:prod::ml-api::ml-api:registry:Registry$aws:ecr/repository:Repository::x` -> the
    resource's own type, `aws:ecr/repository:Repository`."""
    return urn.split("::")[2].rsplit("$", 1)[-1]


@dataclass
class FakePulumi:
    """`pulumi` for this stack as the engine behaves: its resources are the URNs the real program
    declares; `up --target`/`destroy --exclude` select among them by Pulumi's rule (exact URNs, or
    wildcards; a component's URN alone does not select its children); the resources ops can observe
    appear in (or leave) moto. `pulumi config set|rm ml-api:imageTag` changes the config `up` uses:
    without a tag, `up` runs the program's build command, which pushes `version`."""

    session: boto3.session.Session
    stack: Stack
    version: str = BENTO_TAG.split(":")[1]
    image_tag: str = ""
    fail_up_after_create: str = ""  # e.g. a wait_for_steady_state timeout: up exits non-zero
    # `up` on an existing service registers a new revision whose tasks fail: the circuit breaker
    # puts the previous one back, and `up` still succeeds (wait_for_steady_state is satisfied).
    circuit_breaker_rolls_back: bool = False
    registered: str = ""  # the taskDefinitionArn stack output
    fail_destroy: str = ""
    urns: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)  # what each command did, in order

    def __post_init__(self) -> None:
        self.urns = self.urns or list(program_urns(self.stack.name))
        self.image_tag = self.image_tag or self.stack.image_tag

    def effects(self) -> dict[str, Callable[[list[str]], Optional[Completed]]]:
        return {"pulumi up": self.up, "pulumi destroy": self.destroy, "pulumi stack output": self.output,
                "pulumi config set": self.config_set, "pulumi config rm": self.config_rm}

    @staticmethod
    def _flag_values(cmd: list[str], flag: str) -> list[str]:
        return [cmd[i + 1] for i, arg in enumerate(cmd) if arg == flag]

    def _selected(self, cmd: list[str]) -> set[str]:
        targets, excluded = self._flag_values(cmd, "--target"), self._flag_values(cmd, "--exclude")
        chosen = [u for u in self.urns if not targets or urn_selected(u, targets)]
        return {urn_type(u) for u in chosen if not urn_selected(u, excluded)}

    def up(self, cmd: list[str]) -> Optional[Completed]:
        types = self._selected(cmd)
        ecr = self.session.client("ecr")
        if "aws:ecr/repository:Repository" in types and not self._repository_exists():
            create_registry(self.session, self.stack)
            self.history.append("created repository")
        tag = self.image_tag
        if not tag and "command:local:Command" in types:
            if self._repository_exists():
                existing = ecr.describe_images(repositoryName=self.stack.repository)["imageDetails"]
                if not any(self.version in img.get("imageTags", []) for img in existing):
                    push_image(self.session, self.stack, self.version)
                self.history.append(f"pushed {self.version}")
                tag = self.version
            else:
                return Completed(255, "ops push: ECR repository not found")
        if "aws:ecs/service:Service" in types and not self._service_exists():
            created = create_stack(self.session, self.stack, tag)
            self.registered = created["task_definition"]["taskDefinitionArn"]
            self.history.append(f"created service with {tag}")
        elif "aws:ecs/service:Service" in types and self.circuit_breaker_rolls_back:
            from ops.rollout import describe_service, register_revision

            ecs = self.session.client("ecs")
            current = describe_service(ecs, self.stack.cluster, self.stack.service)["taskDefinition"]
            self.registered = register_revision(ecs, current, f"{self._repository_uri()}:{tag}")
            self.history.append(f"registered {self.registered.rsplit('/', 1)[-1]}; circuit breaker rolled back")
        if self.fail_up_after_create:
            return Completed(255, self.fail_up_after_create)
        return None

    def output(self, cmd: list[str]) -> Completed:
        if cmd[3] == "taskDefinitionArn" and self.registered:
            return Completed(0, self.registered + "\n")
        return Completed(255, f"current stack does not have output property '{cmd[3]}'")

    def _repository_uri(self) -> str:
        ecr = self.session.client("ecr")
        return ecr.describe_repositories(repositoryNames=[self.stack.repository])["repositories"][0]["repositoryUri"]

    def destroy(self, cmd: list[str]) -> Optional[Completed]:
        if self.fail_destroy:
            return Completed(255, self.fail_destroy)
        types = self._selected(cmd)
        if "aws:ecs/service:Service" in types and self._service_exists():
            ecs = self.session.client("ecs")
            ecs.delete_service(cluster=self.stack.cluster, service=self.stack.service, force=True)
            self.history.append("deleted service")
        if "aws:ecr/repository:Repository" in types and self._repository_exists():
            ecr = self.session.client("ecr")
            if ecr.describe_images(repositoryName=self.stack.repository)["imageDetails"]:
                # force_delete is off: ECR refuses to delete a repository that holds images.
                return Completed(255, "RepositoryNotEmptyException")
            ecr.delete_repository(repositoryName=self.stack.repository)
            self.history.append("deleted repository")
        return None

    def config_set(self, cmd: list[str]) -> None:
        if cmd[3] == f"{PROJECT}:imageTag":
            self.image_tag = cmd[4]

    def config_rm(self, cmd: list[str]) -> None:
        if cmd[3] == f"{PROJECT}:imageTag":
            self.image_tag = ""

    def _repository_exists(self) -> bool:
        ecr = self.session.client("ecr")
        try:
            ecr.describe_repositories(repositoryNames=[self.stack.repository])
        except ecr.exceptions.RepositoryNotFoundException:
            return False
        return True

    def _service_exists(self) -> bool:
        ecs = self.session.client("ecs")
        try:
            found = ecs.describe_services(cluster=self.stack.cluster, services=[self.stack.service])
        except ecs.exceptions.ClusterNotFoundException:
            return False
        return any(s.get("status") == "ACTIVE" for s in found.get("services", []))
