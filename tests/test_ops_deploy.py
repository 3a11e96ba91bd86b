"""`ops deploy`, `update`, `destroy`: command lines (bentoml, docker, pulumi) through a recording
runner, AWS calls against moto, and rollouts (which moto does not model) with botocore Stubber."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import os
from pathlib import Path

import pytest
from botocore.stub import Stubber
from moto import mock_aws

from ops import deploy
from ops.cli import main
from ops.errors import OpsError
from ops.image import bentoml_executable
from ops.rollout import register_revision, wait_for_rollout
from ops.runner import Completed
from ops.testing import (BENTO_TAG, FakeRunner, create_registry, create_stack, make_context,
                         moto_session, push_image)
from ops.stack import load_stack

VERSION = BENTO_TAG.split(":")[1]
CLUSTER = SERVICE = "ml-api-prod"
TD1 = "arn:aws:ecs:us-west-2:123456789012:task-definition/ml-api-prod:1"
TD2 = "arn:aws:ecs:us-west-2:123456789012:task-definition/ml-api-prod:2"
REPO_URI = "123456789012.dkr.ecr.us-west-2.amazonaws.com/ml-api-prod"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def session(monkeypatch):
    # moto reports this many running tasks for every service, so new services look stable.
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "5")
    with mock_aws():
        yield moto_session()


def pulumi_world_runner(session) -> FakeRunner:
    """bentoml/docker/pulumi as recorded commands whose AWS effects land in moto."""
    stack = load_stack("prod")
    pushed: list[str] = []
    runner = FakeRunner()
    runner.effects = {
        "bentoml build": lambda cmd: Completed(0, f"building...\n__tag__:{BENTO_TAG}\n"),
        "pulumi up --yes --skip-preview --target": lambda cmd: create_registry(session, stack) and None,
        "docker push": lambda cmd: pushed.append(push_image(session, stack, cmd[2].rsplit(":", 1)[1])) or None,
        "pulumi up --yes --skip-preview --stack": lambda cmd: create_stack(session, stack, VERSION) and None,
    }
    return runner


def test_first_deploy_creates_registry_pushes_then_brings_up_the_stack(session):
    runner = pulumi_world_runner(session)
    ctx, printed = make_context(session, runner)
    result = deploy.deploy(ctx)

    assert result.outcome == "completed", printed
    infra = str(ctx.stack.infra_dir)
    scope = ["--stack", "prod", "--cwd", infra, "--non-interactive"]
    registry_host = REPO_URI.split("/")[0]
    assert runner.commands == [
        ["pulumi", "stack", "select", "prod", "--cwd", infra, "--non-interactive", "--create"],
        ["pulumi", "up", "--yes", "--skip-preview", "--target",
         "urn:pulumi:prod::ml-api::ml-api:registry:Registry::ml-api-prod", *scope],
        [bentoml_executable(), "build", "--output", "tag"],
        ["container/containerize.sh"],
        ["docker", "tag", BENTO_TAG, f"{REPO_URI}:{VERSION}"],
        ["docker", "login", "--username", "AWS", "--password-stdin", registry_host],
        ["docker", "push", f"{REPO_URI}:{VERSION}"],
        ["pulumi", "config", "set", "ml-api:imageTag", VERSION, *scope],
        ["pulumi", "up", "--yes", "--skip-preview", *scope],
    ]
    # The ECR password goes to docker through stdin, never on a command line.
    token = session.client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    password = base64.b64decode(token).decode().split(":", 1)[1]
    assert runner.stdins[5] == password and not any(password in line for line in runner.lines())
    # The image is the repository's own build (make container), for the platform Fargate runs.
    assert runner.envs[3] == {"BENTOML_HOME": os.environ.get("BENTOML_HOME") or os.path.expanduser("~/bentoml"),
                              "BENTO_TAG": BENTO_TAG, "CONTAINER_BACKEND": "docker",
                              "BENTOML": bentoml_executable(), "DOCKER_DEFAULT_PLATFORM": "linux/amd64"}
    service = session.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
    image = session.client("ecs").describe_task_definition(
        taskDefinition=service["taskDefinition"])["taskDefinition"]["containerDefinitions"][0]["image"]
    assert image == f"{REPO_URI}:{VERSION}"
    assert any(line.startswith("==> rollout complete") for line in printed), printed
    assert any("creating the ECR repository" in line for line in printed)


def test_redeploy_of_the_same_bento_skips_registry_and_push(session):
    stack = load_stack("prod")
    create_stack(session, stack, VERSION)
    push_image(session, stack, VERSION)
    runner = pulumi_world_runner(session)
    runner.effects["pulumi up --yes --skip-preview --stack"] = lambda cmd: None  # nothing changes
    ctx, printed = make_context(session, runner)

    assert deploy.deploy(ctx).outcome == "completed"
    verbs = [" ".join(line.split()[:3]) for line in runner.lines()]
    assert verbs == ["pulumi stack select", "bentoml build --output", "pulumi config set", "pulumi up --yes"]
    assert any("already in ECR" in line for line in printed), printed


def test_register_revision_changes_only_the_image(session):
    stack = load_stack("prod")
    world = create_stack(session, stack, "v1")
    ecs = session.client("ecs")
    new_arn = register_revision(ecs, world["task_definition"]["taskDefinitionArn"], f"{REPO_URI}:v2")
    assert new_arn.endswith(":ml-api-prod:2") or new_arn.endswith("/ml-api-prod:2"), new_arn
    old = ecs.describe_task_definition(taskDefinition=world["task_definition"]["taskDefinitionArn"],
                                       include=["TAGS"])
    new = ecs.describe_task_definition(taskDefinition=new_arn, include=["TAGS"])
    old_c, new_c = old["taskDefinition"]["containerDefinitions"][0], new["taskDefinition"]["containerDefinitions"][0]
    assert new_c["image"] == f"{REPO_URI}:v2"
    assert {k: v for k, v in new_c.items() if k != "image"} == {k: v for k, v in old_c.items() if k != "image"}
    for key in ("cpu", "memory", "networkMode", "requiresCompatibilities", "volumes", "executionRoleArn"):
        assert new["taskDefinition"][key] == old["taskDefinition"][key], key
    assert new["tags"] == old["tags"]


# --- rollouts (Stubber: moto keeps a deployment's task definition fixed) ------------------------

def deployment(task_def, status, state, running, desired=5, failed=0, reason=""):
    return {"id": f"ecs-svc/{task_def[-1]}{status}", "status": status, "taskDefinition": task_def,
            "desiredCount": desired, "pendingCount": desired - running, "runningCount": running,
            "failedTasks": failed, "rolloutState": state, "rolloutStateReason": reason,
            "createdAt": dt.datetime(2026, 1, 1), "updatedAt": dt.datetime(2026, 1, 1)}


def service_response(task_def, *deployments):
    return {"services": [{"serviceName": SERVICE, "clusterArn": f"arn:aws:ecs:us-west-2:123456789012:cluster/{CLUSTER}",
                          "status": "ACTIVE", "taskDefinition": task_def, "desiredCount": 5,
                          "runningCount": 5, "pendingCount": 0, "deployments": list(deployments)}],
            "failures": []}


TASK_DEFINITION = {
    "taskDefinitionArn": TD1, "family": "ml-api-prod", "revision": 1, "status": "ACTIVE",
    "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "1024", "memory": "2048",
    "executionRoleArn": "arn:aws:iam::123456789012:role/ml-api-prod-execution",
    "volumes": [{"name": "tmp"}],
    "containerDefinitions": [{"name": "api", "image": f"{REPO_URI}:v1", "user": "1034",
                              "readonlyRootFilesystem": True, "stopTimeout": 45}],
    "registeredAt": dt.datetime(2026, 1, 1),
}


def stub_update_calls(stubber: Stubber, rollout: list[dict]) -> None:
    stubber.add_response("describe_services", service_response(TD1, deployment(TD1, "PRIMARY", "COMPLETED", 5)),
                         {"cluster": CLUSTER, "services": [SERVICE]})
    stubber.add_response("describe_task_definition", {"taskDefinition": TASK_DEFINITION, "tags": []},
                         {"taskDefinition": TD1, "include": ["TAGS"]})
    new_containers = copy.deepcopy(TASK_DEFINITION["containerDefinitions"])
    new_containers[0]["image"] = f"{REPO_URI}:v2"
    stubber.add_response(
        "register_task_definition",
        {"taskDefinition": {**TASK_DEFINITION, "taskDefinitionArn": TD2, "revision": 2,
                            "containerDefinitions": new_containers}},
        {"family": "ml-api-prod", "executionRoleArn": TASK_DEFINITION["executionRoleArn"],
         "networkMode": "awsvpc", "containerDefinitions": new_containers, "volumes": [{"name": "tmp"}],
         "requiresCompatibilities": ["FARGATE"], "cpu": "1024", "memory": "2048"})
    stubber.add_response("update_service", {"service": service_response(TD2)["services"][0]},
                         {"cluster": CLUSTER, "service": SERVICE, "taskDefinition": TD2})
    for response in rollout:
        stubber.add_response("describe_services", response, {"cluster": CLUSTER, "services": [SERVICE]})


def update_context(session, rollout):
    stack = load_stack("prod")
    create_registry(session, stack)
    push_image(session, stack, "v2")
    runner = FakeRunner()
    ctx, printed = make_context(session, runner)
    ecs = session.client("ecs", region_name="us-west-2")
    stubber = Stubber(ecs)
    stub_update_calls(stubber, rollout)
    ctx.aws._clients["ecs"] = ecs
    return ctx, printed, runner, stubber


def test_update_rolls_out_a_new_revision_and_records_the_tag(session):
    ctx, printed, runner, stubber = update_context(session, [
        service_response(TD2, deployment(TD2, "PRIMARY", "IN_PROGRESS", 0), deployment(TD1, "ACTIVE", "COMPLETED", 5)),
        service_response(TD2, deployment(TD2, "PRIMARY", "IN_PROGRESS", 5), deployment(TD1, "ACTIVE", "COMPLETED", 2)),
        service_response(TD2, deployment(TD2, "PRIMARY", "COMPLETED", 5)),
    ])
    with stubber:
        assert main(["update", "--image-tag", "v2"], context=ctx) == 0
        stubber.assert_no_pending_responses()
    assert "  in_progress: 0/5 running, 5 pending, 0 failed; 2 deployment(s)" in printed
    assert "  completed: 5/5 running, 0 pending, 0 failed; 1 deployment(s)" in printed
    assert "==> rollout complete: ml-api-prod:2 is serving" in printed
    assert runner.commands == [["pulumi", "config", "set", "ml-api:imageTag", "v2", "--stack", "prod",
                                "--cwd", str(ctx.stack.infra_dir), "--non-interactive"]]


def test_update_reports_a_circuit_breaker_rollback(session):
    reason = "ECS deployment circuit breaker: tasks failed to start."
    ctx, printed, runner, stubber = update_context(session, [
        service_response(TD2, deployment(TD2, "PRIMARY", "IN_PROGRESS", 0, failed=3), deployment(TD1, "ACTIVE", "COMPLETED", 5)),
        service_response(TD1, deployment(TD1, "PRIMARY", "IN_PROGRESS", 5),
                         deployment(TD2, "ACTIVE", "FAILED", 0, failed=6, reason=reason)),
    ])
    with stubber:
        assert main(["update", "--image-tag", "v2"], context=ctx) == 1
        stubber.assert_no_pending_responses()
    assert f"==> ROLLED BACK by the deployment circuit breaker to ml-api-prod:1: {reason}" in printed
    assert runner.commands == [], "a rolled-back tag must not be recorded in the stack config"


def test_update_refuses_a_tag_that_is_not_in_ecr(session):
    stack = load_stack("prod")
    create_registry(session, stack)
    ctx, _ = make_context(session, FakeRunner())
    with pytest.raises(OpsError, match=r"ml-api-prod:nope is not in ECR"):
        deploy.update(ctx, "nope")


def test_wait_times_out_with_a_hint():
    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

        def sleep(self, seconds):
            self.now += seconds

    import boto3
    ecs = boto3.session.Session(aws_access_key_id="x", aws_secret_access_key="x").client("ecs", region_name="us-west-2")
    stubber = Stubber(ecs)
    for _ in range(5):
        stubber.add_response("describe_services",
                             service_response(TD2, deployment(TD2, "PRIMARY", "IN_PROGRESS", 2)),
                             {"cluster": CLUSTER, "services": [SERVICE]})
    clock, printed = Clock(), []
    with stubber, pytest.raises(OpsError, match="still rolling out .* after 60 s"):
        wait_for_rollout(ecs, CLUSTER, SERVICE, TD2, echo=printed.append, timeout=60, poll=15,
                         sleep=clock.sleep, clock=clock)
    assert printed == ["  in_progress: 2/5 running, 3 pending, 0 failed; 1 deployment(s)"], \
        "progress is printed when it changes, not on every poll"


# --- destroy ---------------------------------------------------------------------------------

def test_destroy_needs_the_stack_name_typed(session):
    stack = load_stack("prod")
    create_registry(session, stack)
    push_image(session, stack, "v1")
    runner = FakeRunner()
    ctx, _ = make_context(session, runner, confirm=lambda prompt: "yes")
    assert main(["destroy"], context=ctx) == 2
    assert runner.commands == []
    assert len(session.client("ecr").describe_images(repositoryName=stack.repository)["imageDetails"]) == 1


def test_destroy_empties_the_repository_then_pulumi_destroys(session):
    stack = load_stack("prod")
    create_registry(session, stack)
    for tag in ("v1", "v2", "v3"):
        push_image(session, stack, tag)
    runner = FakeRunner()
    prompts = []
    ctx, printed = make_context(session, runner, confirm=lambda prompt: prompts.append(prompt) or "prod")
    assert main(["destroy"], context=ctx) == 0
    assert "Type the stack name" in prompts[0] and "ml-api-prod" in prompts[0]
    assert session.client("ecr").describe_images(repositoryName=stack.repository)["imageDetails"] == []
    assert [" ".join(c[:4]) for c in runner.commands] == ["pulumi stack select prod",
                                                          "pulumi destroy --yes --skip-preview"]
    assert "==> deleting 3 images from ml-api-prod" in printed


def test_destroy_of_a_missing_stack_says_so(session, capsys):
    runner = FakeRunner(effects={"pulumi stack select": lambda cmd: Completed(255)})
    ctx, _ = make_context(session, runner)
    assert main(["destroy", "--yes"], context=ctx) == 2
    assert "Pulumi stack 'prod' not found" in capsys.readouterr().err
    assert not any(c[:2] == ["pulumi", "destroy"] for c in runner.commands)
