"""`ops publish-model`, `ops update --model-uri/--candidate-uri` and `ops promote`/`rollback` of a
published candidate: the same image, the task environment naming models in S3 (moto), and the stack
config following. No image is built (no bentoml build, no docker) on any of these paths."""

from __future__ import annotations

import pytest
from moto import mock_aws

from ops import deploy
from ops.cli import main
from ops.rollout import RolloutResult, api_container, describe_service, environment_of
from ops.stack import load_stack
from ops.testing import FakeRunner, create_stack, make_context, moto_session

BUCKET = "ml-api-prod-models-123456789012"


@pytest.fixture
def world(monkeypatch, bentoml_home):
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "5")
    # moto's ECS does not start a deployment on update_service (its one deployment stays the first
    # revision's), so the rollout wait, tested with Stubber in test_ops_deploy, reports success here.
    monkeypatch.setattr(deploy, "_wait", lambda ctx, task_definition: RolloutResult("completed", task_definition))
    with mock_aws():
        session = moto_session()
        session.client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        created = create_stack(session, load_stack("prod"), "v1")
        runner = FakeRunner()
        ctx, printed = make_context(session, runner)
        yield session, ctx, printed, runner, created


def running_environment(session) -> dict[str, str]:
    ecs = session.client("ecs")
    current = describe_service(ecs, "ml-api-prod", "ml-api-prod")["taskDefinition"]
    return environment_of(api_container(ecs, current)), api_container(ecs, current)["image"]


def test_publish_then_serve_then_candidate_then_promote_then_rollback_without_a_build(world, capsys):
    import bentoml

    session, ctx, printed, runner, created = world
    version = bentoml.models.get("xgb_classifier:latest").tag.version
    uri = f"s3://{BUCKET}/models/xgb_classifier/{version}"

    assert main(["publish-model"], context=ctx) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == uri
    head = session.client("s3").head_object(Bucket=BUCKET, Key=f"models/xgb_classifier/{version}")
    assert head["ContentLength"] > 1000
    assert f"==> published {uri}" in printed

    image_before = running_environment(session)[1]
    assert main(["update", "--model-uri", uri], context=ctx) == 0, printed
    environment, image = running_environment(session)
    assert environment["MODEL_URI"] == uri and "MODEL_TAG" not in environment
    assert image == image_before, "a new model must not need a new image"

    assert main(["update", "--candidate-uri", uri, "--candidate-mode", "canary"], context=ctx) == 0, printed
    environment, _ = running_environment(session)
    assert (environment["CANDIDATE_MODEL_URI"], environment["XGB_CANDIDATE_MODE"]) == (uri, "canary")

    assert main(["promote"], context=ctx) == 0, printed
    environment, image = running_environment(session)
    assert environment["MODEL_URI"] == uri
    assert not {"CANDIDATE_MODEL_URI", "XGB_CANDIDATE_MODE", "XGB_CANDIDATE_PERCENT"} & set(environment), environment
    assert image == image_before

    assert main(["rollback"], context=ctx) == 0, printed
    environment, _ = running_environment(session)
    assert environment["CANDIDATE_MODEL_URI"] == uri, "rollback goes back to the revision with the candidate"

    lines = runner.lines()
    assert not any(line.startswith(("bentoml build", "docker")) for line in lines), lines
    assert f"pulumi config set ml-api:modelUri {uri} --stack prod" in " ".join(lines)


def test_update_refuses_a_model_uri_that_was_never_published(world, capsys):
    session, ctx, printed, runner, created = world
    missing = f"s3://{BUCKET}/models/xgb_classifier/nosuchversion"
    before = running_environment(session)
    assert main(["update", "--model-uri", missing], context=ctx) == 2
    assert f"{missing} does not exist: publish it with `python -m ops publish-model`" in capsys.readouterr().err
    assert running_environment(session) == before, "no revision may be rolled out for a model that is not there"


def test_publish_model_of_a_tag_not_in_the_store_says_so(world, capsys):
    _session, ctx, _printed, _runner, _created = world
    assert main(["publish-model", "xgb_classifier:notastoredversion"], context=ctx) == 2
    assert "model 'xgb_classifier:notastoredversion' is not in the BentoML store" in capsys.readouterr().err
