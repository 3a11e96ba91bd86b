"""`ops promote` and `ops rollback` over a promotion: the task definition's model environment and the
stack config's model keys, on moto with ECS rollouts through botocore Stubber (as test_ops_deploy)."""

from __future__ import annotations

import copy
import dataclasses

from botocore.stub import ANY

from ops.cli import main
from ops.rollout import REGISTERABLE
from ops.stack import Pulumi
from test_ops_deploy import (CLUSTER, REPO_URI, SERVICE, TASK_DEFINITION, TD1, TD2, TD3, deployment, service_response,  # noqa: F401
                             session, stubbed_ecs_context)

OLD, NEW = "xgb_classifier:old", "xgb_classifier:new"
WITH_CANDIDATE = {"XGB_WORKERS": "1", "MODEL_TAG": OLD, "XGB_CANDIDATE_TAG": NEW, "XGB_CANDIDATE_MODE": "canary",
                  "XGB_CANDIDATE_PERCENT": "10", "XGB_SHADOW_MIN_AGREEMENT": "0.7"}
PROMOTED = {"XGB_WORKERS": "1", "MODEL_TAG": NEW}


def task_definition(arn: str, environment: dict[str, str]) -> dict:
    containers = copy.deepcopy(TASK_DEFINITION["containerDefinitions"])
    containers[0]["image"] = f"{REPO_URI}:v2"
    containers[0]["environment"] = [{"name": k, "value": v} for k, v in sorted(environment.items())]
    return {**TASK_DEFINITION, "taskDefinitionArn": arn, "containerDefinitions": containers}


def with_config(ctx, **settings: str):
    """The context with the stack config's model keys set as given."""
    ctx.stack = dataclasses.replace(ctx.stack, model_settings=tuple(settings.items()))
    ctx.pulumi = Pulumi(ctx.stack, ctx.run)
    return ctx


def completed_rollout(stubber, target: str) -> None:
    stubber.add_response("update_service", {"service": service_response(target)["services"][0]},
                         {"cluster": CLUSTER, "service": SERVICE, "taskDefinition": target})
    stubber.add_response("describe_services", service_response(target, deployment(target, "PRIMARY", "COMPLETED", 5)),
                         {"cluster": CLUSTER, "services": [SERVICE]})


def config_commands(runner) -> list[list[str]]:
    return [c[1:5] if c[2] == "set" else c[1:4] for c in runner.commands]


def test_promote_serves_the_candidate_as_primary_and_the_stack_config_follows(session):
    def stub(stubber):
        stubber.add_response("describe_services", service_response(TD2, deployment(TD2, "PRIMARY", "COMPLETED", 5)),
                             {"cluster": CLUSTER, "services": [SERVICE]})
        stubber.add_response("describe_task_definition", {"taskDefinition": task_definition(TD2, WITH_CANDIDATE)}, {"taskDefinition": TD2})
        stubber.add_response("describe_task_definition", {"taskDefinition": task_definition(TD2, WITH_CANDIDATE), "tags": []},
                             {"taskDefinition": TD2, "include": ["TAGS"]})
        registered = task_definition(TD3, PROMOTED)
        expected = {k: ANY for k in REGISTERABLE if registered.get(k) not in (None, [], {})}
        expected["containerDefinitions"] = registered["containerDefinitions"]  # same image, the promoted environment
        stubber.add_response("register_task_definition", {"taskDefinition": registered}, expected)
        completed_rollout(stubber, TD3)

    ctx, printed, runner, stubber = stubbed_ecs_context(session, "v2", stub)
    with_config(ctx, modelTag=OLD, candidateTag=NEW, candidateMode="canary", candidatePercent="10")
    with stubber:
        assert main(["promote"], context=ctx) == 0
        stubber.assert_no_pending_responses()
    assert f"==> promoting {NEW} (primary was {OLD}): ml-api-prod:2 -> ml-api-prod:3; `python -m ops rollback` goes back" in printed
    assert "==> rollout complete: ml-api-prod:3 is serving" in printed
    assert config_commands(runner) == [["config", "set", "ml-api:imageTag", "v2"], ["config", "set", "ml-api:modelTag", NEW],
                                       ["config", "rm", "ml-api:candidateTag"], ["config", "rm", "ml-api:candidateMode"],
                                       ["config", "rm", "ml-api:candidatePercent"]]


def test_rollback_after_a_promotion_serves_both_models_again_and_restores_the_config(session):
    def stub(stubber):
        stubber.add_response("describe_services", service_response(TD3, deployment(TD3, "PRIMARY", "COMPLETED", 5)),
                             {"cluster": CLUSTER, "services": [SERVICE]})
        stubber.add_response("list_task_definitions", {"taskDefinitionArns": [TD1, TD2, TD3]},
                             {"familyPrefix": "ml-api-prod", "status": "ACTIVE"})
        stubber.add_response("describe_task_definition", {"taskDefinition": task_definition(TD2, WITH_CANDIDATE)}, {"taskDefinition": TD2})
        completed_rollout(stubber, TD2)

    ctx, printed, runner, stubber = stubbed_ecs_context(session, "v2", stub)
    with_config(ctx, modelTag=NEW)  # what `ops promote` left
    with stubber:
        assert main(["rollback"], context=ctx) == 0
        stubber.assert_no_pending_responses()
    assert "==> rolling back ml-api-prod:3 -> ml-api-prod:2 (image tag v2)" in printed
    assert config_commands(runner) == [["config", "set", "ml-api:imageTag", "v2"], ["config", "set", "ml-api:modelTag", OLD],
                                       ["config", "set", "ml-api:candidateTag", NEW], ["config", "set", "ml-api:candidateMode", "canary"],
                                       ["config", "set", "ml-api:candidatePercent", "10"], ["config", "set", "ml-api:shadowMinAgreement", "0.7"]]


def test_promote_without_a_candidate_changes_nothing(session, capsys):
    def stub(stubber):
        stubber.add_response("describe_services", service_response(TD3, deployment(TD3, "PRIMARY", "COMPLETED", 5)),
                             {"cluster": CLUSTER, "services": [SERVICE]})
        stubber.add_response("describe_task_definition", {"taskDefinition": task_definition(TD3, PROMOTED)}, {"taskDefinition": TD3})

    ctx, printed, runner, stubber = stubbed_ecs_context(session, "v2", stub)
    with stubber:
        assert main(["promote"], context=ctx) == 2
        stubber.assert_no_pending_responses()
    assert "ml-api-prod:3 runs no candidate model (XGB_CANDIDATE_TAG or CANDIDATE_MODEL_URI): nothing to promote" in capsys.readouterr().err
    assert runner.commands == []


def test_the_image_is_built_with_the_stacks_models_so_it_holds_the_candidate():
    from ops.image import build_bento
    from ops.runner import Completed
    from ops.stack import load_stack
    from ops.testing import BENTO_TAG, FakeRunner

    runner = FakeRunner({"bentoml build": lambda cmd: Completed(0, f"__tag__:{BENTO_TAG}\n")})
    stack = dataclasses.replace(load_stack("prod"), model_settings=(("modelTag", OLD), ("candidateTag", NEW), ("candidateMode", "shadow")))
    assert build_bento(runner, stack) == BENTO_TAG
    assert (runner.envs[0]["MODEL_TAG"], runner.envs[0]["XGB_CANDIDATE_TAG"]) == (OLD, NEW)
    assert "XGB_CANDIDATE_MODE" not in runner.envs[0], "what is packed depends on the tags only"
