"""`ops deploy`, `update`, `destroy`: command lines (bentoml, docker, pulumi) through a recording
runner, AWS calls against moto, and rollouts (which moto does not model) with botocore Stubber."""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import os
import sys
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
from ops.stack import load_stack, urn_selected
from ops.testing import (BENTO_TAG, FakePulumi, FakeRunner, create_registry, create_stack, make_context,
                         moto_session, program_urns, push_image, urn_type)

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


def pulumi_world(session, **fake) -> tuple[FakeRunner, FakePulumi]:
    """bentoml/docker as recorded commands, `pulumi` as FakePulumi (the engine's rules), in moto."""
    pulumi = FakePulumi(session, load_stack("prod"), **fake)
    runner = FakeRunner(effects={
        "bentoml build": lambda cmd: Completed(0, f"building...\n__tag__:{BENTO_TAG}\n"),
        "docker push": lambda cmd: push_image(session, load_stack("prod"), cmd[2].rsplit(":", 1)[1]) and None,
        **pulumi.effects()})
    return runner, pulumi


def test_first_deploy_on_a_fresh_account_previews_then_pulumi_up_builds_and_serves(session):
    """One `pulumi up` creates the repository, builds and pushes the image and the service, in the
    program's dependency order. (The old deploy's `pulumi up --target <Registry component URN>`
    creates no repository under Pulumi's targeting rule, and stopped at its second step.)"""
    runner, pulumi = pulumi_world(session)
    prompts = []
    ctx, printed = make_context(session, runner, confirm=lambda p: prompts.append(p) or "y")
    result = deploy.deploy(ctx)

    assert result.outcome == "completed", printed
    infra = str(ctx.stack.infra_dir)
    scope = ["--stack", "prod", "--cwd", infra, "--non-interactive"]
    assert runner.commands == [
        ["pulumi", "stack", "select", "prod", "--cwd", infra, "--non-interactive", "--create"],
        ["pulumi", "preview", "--diff", *scope],
        ["pulumi", "up", "--yes", "--skip-preview", *scope],
        ["pulumi", "stack", "output", "taskDefinitionArn", *scope],
    ]
    assert pulumi.history == ["created repository", f"pushed {VERSION}", f"created service with {VERSION}"]
    # A brand-new account gets the ECS service-linked role before the first service.
    assert "==> created the ECS service-linked role (AWSServiceRoleForECS)" in printed
    assert session.client("iam").list_roles(PathPrefix="/aws-service-role/ecs.amazonaws.com/")["Roles"]
    assert prompts == ["Apply these changes to stack 'prod' (ml-api-prod, us-west-2)? [y/N] "]
    service = session.client("ecs").describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
    image = session.client("ecs").describe_task_definition(
        taskDefinition=service["taskDefinition"])["taskDefinition"]["containerDefinitions"][0]["image"]
    assert image == f"{REPO_URI}:{VERSION}"
    assert any(line.startswith("==> rollout complete") for line in printed), printed


def test_deploy_applies_nothing_unless_confirmed(session, capsys):
    runner, pulumi = pulumi_world(session)
    ctx, printed = make_context(session, runner, confirm=lambda p: "n")
    assert main(["deploy"], context=ctx) == 2
    assert [c[:2] for c in runner.commands] == [["pulumi", "stack"], ["pulumi", "preview"]]
    assert pulumi.history == []
    assert "not confirmed: nothing was changed (pass --yes" in capsys.readouterr().err

    def no_terminal(prompt):
        raise EOFError
    ctx, _ = make_context(session, runner, confirm=no_terminal)
    assert main(["deploy"], context=ctx) == 2 and pulumi.history == []
    ctx, _ = make_context(session, runner, confirm=no_terminal)
    assert main(["deploy", "--yes"], context=ctx) == 0 and pulumi.history[0] == "created repository"


def test_pulumis_targeting_rule_as_the_fake_models_it(session):
    """`--target` names exact URNs; a component's children are selected only by a `**` glob."""
    stack = load_stack("prod")
    component = f"urn:pulumi:prod::ml-api::ml-api:registry:Registry::{stack.prefix}"
    urns = program_urns()
    assert component in urns
    children = [u for u in urns if u.startswith("urn:pulumi:prod::ml-api::ml-api:registry:Registry$")]
    assert {urn_type(u) for u in children} == {"aws:ecr/repository:Repository",
                                               "aws:ecr/lifecyclePolicy:LifecyclePolicy"}
    assert [u for u in urns if urn_selected(u, [component])] == [component]
    assert sorted(u for u in urns if urn_selected(u, [stack.registry_urns])) == sorted([component, *children])

    runner, pulumi = pulumi_world(session)
    runner(["pulumi", "up", "--yes", "--skip-preview", "--target", component])
    assert pulumi.history == [], "targeting the component alone creates none of its children"
    runner(["pulumi", "up", "--yes", "--skip-preview", "--target", stack.registry_urns])
    assert pulumi.history == ["created repository"]


def test_deploy_of_a_pinned_tag_and_unpinning(session):
    stack = load_stack("prod")
    create_registry(session, stack)
    push_image(session, stack, "v1")
    runner, pulumi = pulumi_world(session)
    ctx, printed = make_context(session, runner)
    assert main(["deploy", "--yes", "--image-tag", "v1"], context=ctx) == 0
    assert ["pulumi", "config", "set", "ml-api:imageTag", "v1"] in [c[:5] for c in runner.commands]
    assert pulumi.history == ["created service with v1"], "a pinned tag is not built"

    pinned = dataclasses.replace(stack, image_tag="v1")
    runner, pulumi = pulumi_world(session)
    ctx, printed = make_context(session, runner)
    ctx.stack = pinned
    ctx.pulumi.stack = pinned
    assert deploy.deploy(ctx, assume_yes=True).outcome == "completed"
    assert ["pulumi", "config", "rm", "ml-api:imageTag"] in [c[:4] for c in runner.commands]
    assert pulumi.history == [f"pushed {VERSION}"], "unpinned, `pulumi up` builds this checkout"


def test_deploy_refuses_a_tag_that_is_not_in_ecr(session, capsys):
    create_registry(session, load_stack("prod"))
    runner, pulumi = pulumi_world(session)
    ctx, _ = make_context(session, runner)
    assert main(["deploy", "--yes", "--image-tag", "nope"], context=ctx) == 2
    assert "image tag nope is not in ECR repository ml-api-prod" in capsys.readouterr().err
    assert pulumi.history == []


def test_push_prints_only_the_image_on_stdout(session, capsys):
    """`pulumi up` runs `python -m ops push` and reads its stdout: the program's parser must find
    the image in what push really prints."""
    sys.path.insert(0, str(REPO / "infra_pulumi"))
    from ml_api_infra.image import pushed_image
    from ml_api_infra.mocks import pushed_stdout

    stack = load_stack("prod")
    create_registry(session, stack)
    runner, _ = pulumi_world(session)
    ctx, printed = make_context(session, runner)
    assert main(["push", "--repository-url", REPO_URI], context=ctx) == 0
    stdout = capsys.readouterr().out
    assert stdout == f"__image__:{REPO_URI}:{VERSION}\n", "progress must not go to stdout"
    assert any("pushing" in line for line in printed)
    assert pushed_image(stdout) == f"{REPO_URI}:{VERSION}"
    # The ECR password goes to docker through stdin, never on a command line.
    token = session.client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    password = base64.b64decode(token).decode().split(":", 1)[1]
    assert [Path(c[0]).name for c in runner.commands] == ["bentoml", "containerize.sh", "docker", "docker", "docker"]
    assert runner.stdins[3] == password and not any(password in line for line in runner.lines())
    # The image is the repository's own build (make image), for the platform Fargate runs.
    assert runner.envs[1] == {"BENTOML_HOME": os.environ.get("BENTOML_HOME") or os.path.expanduser("~/bentoml"),
                              "BENTO_TAG": BENTO_TAG, "CONTAINER_BACKEND": "docker",
                              "BENTOML": bentoml_executable(), "DOCKER_DEFAULT_PLATFORM": "linux/amd64"}
    modelled = pushed_stdout(f".venv/bin/python -m ops push --repository-url {REPO_URI}", VERSION)
    assert pushed_image(modelled) == pushed_image(stdout), "the mocks model push's output"


def test_failed_first_deploy_says_failed_never_rolled_back_to_revision_1(session):
    """The service's first deployment fails (tasks never healthy): `pulumi up` fails waiting for
    steady state, and there is no earlier revision the circuit breaker could go back to."""
    reason = "ECS deployment circuit breaker: tasks failed to start."
    runner, pulumi = pulumi_world(session, fail_up_after_create="waiting for service to reach a steady state: timeout")
    ctx, printed = make_context(session, runner)
    ecs = session.client("ecs", region_name="us-west-2")
    stubber = Stubber(ecs)
    stubber.add_response("describe_services", service_response(TD1, deployment(TD1, "PRIMARY", "IN_PROGRESS", 0, failed=6)),
                         {"cluster": CLUSTER, "services": [SERVICE]})
    stubber.add_response("describe_services", service_response(
        TD1, deployment(TD1, "PRIMARY", "FAILED", 0, failed=6, reason=reason)), {"cluster": CLUSTER, "services": [SERVICE]})
    stub_stopped_tasks(stubber, TD1)
    ctx.aws._clients["ecs"] = ecs
    with stubber:
        assert main(["deploy", "--yes"], context=ctx) == 1
        stubber.assert_no_pending_responses()
    assert any(line.startswith(f"    stopped task 0a1b2c: {STOPPED_REASON}") for line in printed), printed
    assert not any("ROLLED BACK" in line for line in printed), printed
    assert (f"==> DEPLOYMENT FAILED: ml-api-prod:1 did not become healthy, and the service had no "
            f"earlier deployment to roll back to: {reason}") in printed


def test_deploy_reports_a_rollback_that_pulumi_up_called_success(session, capsys):
    """terraform-provider-aws #20858: wait_for_steady_state is satisfied by the circuit breaker's
    rollback, so `pulumi up` exits 0. ops compares the stack's taskDefinitionArn output with the
    service's and says ROLLED BACK, exit 1."""
    runner, pulumi = pulumi_world(session)
    ctx, printed = make_context(session, runner)
    assert deploy.deploy(ctx, assume_yes=True).outcome == "completed"
    pulumi.circuit_breaker_rolls_back = True
    pulumi.version = "v2newimage"
    printed.clear()
    assert main(["deploy", "--yes"], context=ctx) == 1
    assert "==> the stack registered ml-api-prod:2, the service runs ml-api-prod:1" in printed, printed
    assert any(line.startswith("==> ROLLED BACK by the deployment circuit breaker to ml-api-prod:1") for line in printed), printed
    assert not any(line.startswith("==> rollout complete") for line in printed), printed


def test_the_service_linked_role_that_exists_already_is_not_an_error(session):
    """IAM says InvalidInput ("has been taken in this account") for an existing role (moto says EntityAlreadyExists)."""
    runner, _pulumi = pulumi_world(session)
    ctx, printed = make_context(session, runner)
    iam = session.client("iam")
    stubber = Stubber(iam)
    stubber.add_client_error("create_service_linked_role", "InvalidInput",
                             "Service role name AWSServiceRoleForECS has been taken in this account, please try a different suffix.",
                             expected_params={"AWSServiceName": "ecs.amazonaws.com"})
    stubber.add_client_error("create_service_linked_role", "AccessDenied", "not allowed",
                             expected_params={"AWSServiceName": "ecs.amazonaws.com"})
    ctx.aws._clients["iam"] = iam
    with stubber:
        deploy.ensure_ecs_service_linked_role(ctx)
        with pytest.raises(Exception, match="AccessDenied"):
            deploy.ensure_ecs_service_linked_role(ctx)
    assert printed == []


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


STOPPED_REASON = "Task failed ELB health checks in (target-group arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/ml-api-prod/73e2d6bc24d8a067)"


def stub_stopped_tasks(stubber: Stubber, task_definition: str = "", reason: str = STOPPED_REASON) -> None:
    """ECS's stopped tasks of the service: one of `task_definition` (none without it) and one older."""
    arns = [f"arn:aws:ecs:us-west-2:123456789012:task/ml-api-prod/{n}" for n in ("0a1b2c", "9f8e7d")]
    stubber.add_response("list_tasks", {"taskArns": arns if task_definition else []},
                         {"cluster": CLUSTER, "serviceName": SERVICE, "desiredStatus": "STOPPED"})
    if task_definition:
        stubber.add_response("describe_tasks", {"tasks": [
            {"taskArn": arns[0], "taskDefinitionArn": task_definition, "stoppedReason": reason,
             "containers": [{"name": "api", "exitCode": 137, "reason": "OutOfMemoryError: Container killed due to memory usage"}]},
            {"taskArn": arns[1], "taskDefinitionArn": "arn:aws:ecs:us-west-2:123456789012:task-definition/ml-api-prod:0",
             "stoppedReason": "Scaling activity initiated by deployment"}]},
            {"cluster": CLUSTER, "tasks": arns})


def stubbed_ecs_context(session, pushed_tag, stub):
    """A context on moto whose ECS client answers through a Stubber that `stub` fills in."""
    stack = load_stack("prod")
    create_registry(session, stack)
    push_image(session, stack, pushed_tag)
    runner = FakeRunner()
    ctx, printed = make_context(session, runner)
    ecs = session.client("ecs", region_name="us-west-2")
    stubber = Stubber(ecs)
    stub(stubber)
    ctx.aws._clients["ecs"] = ecs
    return ctx, printed, runner, stubber


def update_context(session, rollout):
    return stubbed_ecs_context(session, "v2", lambda stubber: stub_update_calls(stubber, rollout))


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
    stub_stopped_tasks(stubber, TD2)
    with stubber:
        assert main(["update", "--image-tag", "v2"], context=ctx) == 1
        stubber.assert_no_pending_responses()
    assert f"==> ROLLED BACK by the deployment circuit breaker to ml-api-prod:1: {reason}" in printed
    # Why the new revision's tasks stopped, and only theirs (not the older revision's scale-in).
    assert [line for line in printed if line.startswith("    stopped task")] == [
        f"    stopped task 0a1b2c: {STOPPED_REASON} (api: OutOfMemoryError: Container killed due to memory usage)"]
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


# --- rollback ---------------------------------------------------------------------------------

TD3 = "arn:aws:ecs:us-west-2:123456789012:task-definition/ml-api-prod:3"


def rollback_context(session, rollout, *, current=TD2, revisions=(TD1, TD2), register=None):
    """ECS through Stubber (moto keeps a deployment's task definition fixed): the service runs
    `current`; the family has `revisions` (or, with `register`, the rollback registers that
    revision); `rollout` are the describe_services answers after."""
    def stub(stubber):
        stubber.add_response("describe_services", service_response(current, deployment(current, "PRIMARY", "COMPLETED", 5)),
                             {"cluster": CLUSTER, "services": [SERVICE]})
        target = register
        if register is None:
            stubber.add_response("list_task_definitions", {"taskDefinitionArns": list(revisions)},
                                 {"familyPrefix": "ml-api-prod", "status": "ACTIVE"})
            older = [r for r in revisions if int(r[-1]) < int(current[-1])]
            target = max(older, key=lambda r: int(r[-1])) if older else None
            if target is not None:
                containers = copy.deepcopy(TASK_DEFINITION["containerDefinitions"])
                containers[0]["image"] = f"{REPO_URI}:v{target[-1]}"
                stubber.add_response("describe_task_definition",
                                     {"taskDefinition": {**TASK_DEFINITION, "taskDefinitionArn": target,
                                                         "containerDefinitions": containers}},
                                     {"taskDefinition": target})
        else:
            stubber.add_response("describe_task_definition", {"taskDefinition": TASK_DEFINITION, "tags": []},
                                 {"taskDefinition": current, "include": ["TAGS"]})
            stubber.add_response("register_task_definition",
                                 {"taskDefinition": {**TASK_DEFINITION, "taskDefinitionArn": register}}, None)
        if target is not None:
            stubber.add_response("update_service", {"service": service_response(target)["services"][0]},
                                 {"cluster": CLUSTER, "service": SERVICE, "taskDefinition": target})
        for response in rollout:
            stubber.add_response("describe_services", response, {"cluster": CLUSTER, "services": [SERVICE]})
    return stubbed_ecs_context(session, "v0", stub)


def test_rollback_goes_to_the_previous_revision_waits_and_pins_its_tag(session):
    ctx, printed, runner, stubber = rollback_context(session, [
        service_response(TD1, deployment(TD1, "PRIMARY", "IN_PROGRESS", 2), deployment(TD2, "ACTIVE", "COMPLETED", 5)),
        service_response(TD1, deployment(TD1, "PRIMARY", "COMPLETED", 5)),
    ])
    with stubber:
        assert main(["rollback"], context=ctx) == 0
        stubber.assert_no_pending_responses()
    assert "==> rolling back ml-api-prod:2 -> ml-api-prod:1 (image tag v1)" in printed
    assert "==> rollout complete: ml-api-prod:1 is serving" in printed
    assert [c[:5] for c in runner.commands] == [["pulumi", "config", "set", "ml-api:imageTag", "v1"]]


def test_rollback_to_an_image_tag_registers_a_revision_with_it(session):
    ctx, printed, runner, stubber = rollback_context(session, [
        service_response(TD3, deployment(TD3, "PRIMARY", "COMPLETED", 5)),
    ], register=TD3)
    with stubber:
        assert main(["rollback", "--to", "v0"], context=ctx) == 0
        stubber.assert_no_pending_responses()
    assert "==> rolling back ml-api-prod:2 -> ml-api-prod:3 (image tag v0)" in printed
    assert [c[:5] for c in runner.commands] == [["pulumi", "config", "set", "ml-api:imageTag", "v0"]]


def test_rollback_from_the_first_revision_says_there_is_nothing_to_go_back_to(session, capsys):
    ctx, printed, runner, stubber = rollback_context(session, [], current=TD1, revisions=(TD1,))
    with stubber:
        assert main(["rollback"], context=ctx) == 2
    err = capsys.readouterr().err
    assert "nothing to roll back to: ml-api-prod:1 is the oldest active revision" in err
    assert "--to TAG" in err and runner.commands == []


def test_a_rollback_that_fails_is_reported_and_not_pinned(session):
    ctx, printed, runner, stubber = rollback_context(session, [
        service_response(TD2, deployment(TD2, "PRIMARY", "IN_PROGRESS", 5),
                         deployment(TD1, "ACTIVE", "FAILED", 0, failed=4, reason="tasks failed to start")),
    ])
    stub_stopped_tasks(stubber)
    with stubber:
        assert main(["rollback"], context=ctx) == 1
    assert "==> ROLLED BACK by the deployment circuit breaker to ml-api-prod:2: tasks failed to start" in printed
    assert runner.commands == []


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


def image_count(session, stack) -> int:
    try:
        return len(session.client("ecr").describe_images(repositoryName=stack.repository)["imageDetails"])
    except session.client("ecr").exceptions.RepositoryNotFoundException:
        return -1


def test_destroy_deletes_images_only_after_pulumi_destroy_succeeded(session):
    stack = load_stack("prod")
    create_stack(session, stack, "v1")
    for tag in ("v1", "v2", "v3"):
        push_image(session, stack, tag)
    runner, pulumi = pulumi_world(session)
    seen = []  # images in ECR when each `pulumi destroy` ran
    destroy_effect = runner.effects["pulumi destroy"]
    runner.effects["pulumi destroy"] = lambda cmd: seen.append(image_count(session, stack)) or destroy_effect(cmd)
    prompts = []
    ctx, printed = make_context(session, runner, confirm=lambda prompt: prompts.append(prompt) or "prod")
    assert main(["destroy"], context=ctx) == 0
    assert "Type the stack name" in prompts[0] and "ml-api-prod" in prompts[0]
    assert [c[:4] + c[4:6] for c in runner.commands if c[1] == "destroy"] == [
        ["pulumi", "destroy", "--yes", "--skip-preview", "--exclude", stack.registry_urns],
        ["pulumi", "destroy", "--yes", "--skip-preview", "--stack", "prod"]]
    assert seen == [3, 0], "the images go after the first destroy succeeded, before the repository's"
    assert pulumi.history == ["deleted service", "deleted repository"]
    assert "==> deleting 3 images from ml-api-prod" in printed


def test_a_failed_pulumi_destroy_keeps_every_image(session, capsys):
    stack = load_stack("prod")
    create_stack(session, stack, "v1")
    push_image(session, stack, "v1")
    runner, pulumi = pulumi_world(session, fail_destroy="error: deleting subnet: DependencyViolation")
    ctx, _ = make_context(session, runner)
    assert main(["destroy", "--yes"], context=ctx) == 2
    assert image_count(session, stack) == 1
    assert "pulumi destroy" in capsys.readouterr().err


def test_destroy_refuses_while_the_alb_has_deletion_protection(session, capsys):
    stack = load_stack("prod")
    world = create_stack(session, stack, "v1")
    push_image(session, stack, "v1")
    session.client("elbv2").modify_load_balancer_attributes(
        LoadBalancerArn=world["alb"]["LoadBalancerArn"],
        Attributes=[{"Key": "deletion_protection.enabled", "Value": "true"}])
    runner, pulumi = pulumi_world(session)
    ctx, _ = make_context(session, runner)
    assert main(["destroy", "--yes"], context=ctx) == 2
    err = capsys.readouterr().err
    assert "has deletion protection" in err and "pulumi config set ml-api:deletionProtection false" in err
    assert not any(c[1] == "destroy" for c in runner.commands) and image_count(session, stack) == 1


def test_destroy_of_a_missing_stack_says_so(session, capsys):
    runner = FakeRunner(effects={"pulumi stack select": lambda cmd: Completed(255)})
    ctx, _ = make_context(session, runner)
    assert main(["destroy", "--yes"], context=ctx) == 2
    assert "Pulumi stack 'prod' not found" in capsys.readouterr().err
    assert not any(c[:2] == ["pulumi", "destroy"] for c in runner.commands)
