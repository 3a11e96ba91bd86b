"""`cleanup` (ECR images beyond N, sparing those in use) and `scale N` (within the autoscaling
bounds), against moto."""

from __future__ import annotations

import pytest
from moto import mock_aws
from moto.ecr.models import ecr_backends

from ops import cleanup
from ops.cli import main
from ops.stack import load_stack
from ops.testing import FakeRunner, create_stack, make_context, moto_session, push_image

STACK = load_stack("prod")
ACCOUNT = "123456789012"


@pytest.fixture
def session(monkeypatch):
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "5")
    with mock_aws():
        yield moto_session()


def push_history(session, tags):
    """Push images oldest first, an hour apart (moto stamps pushes to the second)."""
    for tag in tags:
        push_image(session, STACK, tag)
    # Stamped by tag, whatever order the backend lists them in.
    for image in ecr_backends[ACCOUNT]["us-west-2"].repositories[STACK.repository].images:
        hour = min((tags.index(t) for t in image.image_tags if t in tags), default=-1)
        image.image_pushed_at = 1_760_000_000 + hour * 3600


def remaining_tags(session):
    details = session.client("ecr").describe_images(repositoryName=STACK.repository)["imageDetails"]
    return sorted(t for d in details for t in d.get("imageTags", []))


def test_every_pushed_tag_is_an_image_of_its_own(session):
    # moto gave layerless manifests one of 101 random digests: two of six images shared one now and
    # then, and cleanup, deleting by digest, deleted both (two clean-clone CI failures).
    session.client("ecr").create_repository(repositoryName=STACK.repository)
    digests = [push_image(session, STACK, f"t{i}") for i in range(150)]
    assert len(set(digests)) == 150
    assert len(remaining_tags(session)) == 150


def test_cleanup_keeps_the_newest_and_the_one_in_service(session):
    # The service runs v2, an old image (say, after a rollback): it must survive.
    create_stack(session, STACK, "v2")
    push_history(session, ["v1", "v2", "v3", "v4", "v5", "v6"])
    ctx, printed = make_context(session, FakeRunner())

    assert main(["cleanup", "--keep", "3", "--dry-run"], context=ctx) == 0
    assert remaining_tags(session) == ["v1", "v2", "v3", "v4", "v5", "v6"], "dry run deleted images"
    assert "6 images in ml-api-prod; keeping the newest 3 and those in use (v2); would delete 2" in printed[0]

    deleted = cleanup.cleanup(ctx, keep=3)
    assert len(deleted) == 2
    assert remaining_tags(session) == ["v2", "v4", "v5", "v6"]


def test_cleanup_without_a_service_keeps_only_the_newest(session):
    session.client("ecr").create_repository(repositoryName=STACK.repository)
    push_history(session, ["a", "b", "c"])
    ctx, _ = make_context(session, FakeRunner())
    cleanup.cleanup(ctx, keep=1)
    assert remaining_tags(session) == ["c"]


def test_cleanup_before_deploy_names_the_missing_repository(session, capsys):
    ctx, _ = make_context(session, FakeRunner())
    assert main(["cleanup"], context=ctx) == 2
    assert "ECR repository ml-api-prod not found in us-west-2" in capsys.readouterr().err


def desired(session):
    return session.client("ecs").describe_services(
        cluster=STACK.cluster, services=[STACK.service])["services"][0]["desiredCount"]


def test_scale_within_bounds_sets_desired_count(session):
    create_stack(session, STACK, "v1", min_capacity=5, max_capacity=20)
    ctx, printed = make_context(session, FakeRunner())
    assert main(["scale", "12"], context=ctx) == 0
    assert desired(session) == 12
    assert printed == ["desired count 5 -> 12 (bounds 5..20); target tracking may adjust it again "
                       "after its cooldown"]


@pytest.mark.parametrize("count", [4, 21])
def test_scale_outside_bounds_is_refused(session, capsys, count):
    create_stack(session, STACK, "v1", min_capacity=5, max_capacity=20)
    ctx, _ = make_context(session, FakeRunner())
    assert main(["scale", str(count)], context=ctx) == 2
    assert desired(session) == 5
    assert f"{count} tasks is outside the autoscaling bounds 5..20" in capsys.readouterr().err


def test_scale_before_deploy_names_the_missing_target(session, capsys):
    ctx, _ = make_context(session, FakeRunner())
    assert main(["scale", "6"], context=ctx) == 2
    assert "no scalable target service/ml-api-prod/ml-api-prod" in capsys.readouterr().err
