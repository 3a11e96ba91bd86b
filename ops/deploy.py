"""Verbs that change the deployment: `deploy`, `update`, `promote`, `rollback`, `destroy`.

`update`, `rollback` and `promote` change only the service's task definition (a new revision, or
an older one) and then record the image tag (and, for another model, the model settings) in the
stack config, so the next `pulumi up` keeps it; all three go through `roll_out`, as any later verb
that moves the service to another revision should.
"""

from __future__ import annotations

from typing import Optional

import botocore.exceptions

from ops import image
from ops.context import Context
from ops.errors import OpsError
from ops.aws import error_code
from ops.rollout import (RolloutResult, api_container, describe_service, environment_of, previous_revision,
                         register_revision, stopped_task_reasons, wait_for_rollout)
from ops.stack import MODEL_SETTINGS

# What the task environment says about a candidate model: everything MODEL_SETTINGS sets but the primary's.
PRIMARY_VARIABLES = frozenset({MODEL_SETTINGS["modelTag"], MODEL_SETTINGS["modelUri"]})
CANDIDATE_VARIABLES = frozenset(MODEL_SETTINGS.values()) - PRIMARY_VARIABLES


def _name(task_definition: str) -> str:
    return task_definition.rsplit("/", 1)[-1]


def _report(ctx: Context, result: RolloutResult) -> RolloutResult:
    detail = f": {result.detail}" if result.detail else ""
    if result.outcome == "completed":
        ctx.echo(f"==> rollout complete: {_name(result.task_definition)} is serving")
        return result
    if result.outcome == "rolled_back":
        ctx.echo(f"==> ROLLED BACK by the deployment circuit breaker to {_name(result.task_definition)}{detail}")
    else:
        ctx.echo(f"==> DEPLOYMENT FAILED: {_name(result.task_definition)} did not become healthy, and the "
                 f"service had no earlier deployment to roll back to{detail}")
    reasons = stopped_task_reasons(ctx.client("ecs"), ctx.stack.cluster, ctx.stack.service, result.failed)
    for reason in reasons:
        ctx.echo(f"    stopped task {reason}")
    ctx.echo("    see why with `python -m ops logs --since 30m` and `python -m ops status`")
    return result


def _wait(ctx: Context, task_definition: str) -> RolloutResult:
    ctx.echo(f"==> waiting for the service to be stable (up to {ctx.rollout_timeout / 60:.0f} min)")
    return _report(ctx, wait_for_rollout(
        ctx.client("ecs"), ctx.stack.cluster, ctx.stack.service, task_definition, echo=ctx.echo,
        timeout=ctx.rollout_timeout, poll=ctx.poll_seconds, sleep=ctx.sleep, clock=ctx.clock))


ECS_SERVICE = "ecs.amazonaws.com"


def ensure_ecs_service_linked_role(ctx: Context) -> None:
    """Create AWSServiceRoleForECS, which a brand-new account may not have yet: the first
    CreateService can fail without it (https://docs.aws.amazon.com/AmazonECS/latest/developerguide/using-service-linked-roles.html).
    IAM answers InvalidInput ("has been taken in this account") when it exists already."""
    iam = ctx.client("iam")
    try:
        iam.create_service_linked_role(AWSServiceName=ECS_SERVICE)
        ctx.echo("==> created the ECS service-linked role (AWSServiceRoleForECS)")
    except botocore.exceptions.ClientError as err:
        if error_code(err) not in ("InvalidInput", "EntityAlreadyExists"):
            raise


def _confirm(ctx: Context, prompt: str, expected: tuple[str, ...]) -> bool:
    try:
        return ctx.confirm(prompt).strip().lower() in expected
    except EOFError:  # no terminal to answer on
        return False


def deploy(ctx: Context, assume_yes: bool = False, image_tag: Optional[str] = None) -> RolloutResult:
    """`pulumi preview`, confirm, `pulumi up` (which builds and pushes the image unless a tag is
    pinned, and waits for the service to be steady), then report the rollout."""
    account = ctx.aws.check_credentials()
    ctx.echo(f"==> AWS account {account}, region {ctx.stack.region}, stack {ctx.stack.name}")
    ensure_ecs_service_linked_role(ctx)
    ctx.pulumi.select(create=True)
    if image_tag:
        if not image.image_exists(ctx.aws, ctx.stack, image_tag):
            raise OpsError(f"image tag {image_tag} is not in ECR repository {ctx.stack.repository}")
        ctx.echo(f"==> pinning imageTag {image_tag}")
        ctx.pulumi.set_image_tag(image_tag)
    elif ctx.stack.image_tag:
        ctx.echo(f"==> unpinning imageTag {ctx.stack.image_tag}: `pulumi up` builds and pushes this checkout")
        ctx.pulumi.unpin_image_tag()
    ctx.echo("==> pulumi preview: what `pulumi up` will change")
    ctx.pulumi.preview()
    if not assume_yes and not _confirm(
            ctx, f"Apply these changes to stack '{ctx.stack.name}' ({ctx.stack.prefix}, {ctx.stack.region})? "
                 f"[y/N] ", ("y", "yes")):
        raise OpsError("not confirmed: nothing was changed (pass --yes to apply without asking)")
    ctx.echo("==> pulumi up: image build and push (unless imageTag is pinned), the stack, "
             "then waiting for the service to be steady")
    try:
        ctx.pulumi.up()
        up_failure = None
    except OpsError as err:
        up_failure = err
    try:
        svc = describe_service(ctx.client("ecs"), ctx.stack.cluster, ctx.stack.service)
    except OpsError:
        if up_failure is not None:
            raise up_failure from None
        raise
    # `up` succeeds on a circuit-breaker rollback too (wait_for_steady_state is satisfied by the
    # previous revision running again), so compare what this `up` registered with what runs.
    registered = ctx.pulumi.output("taskDefinitionArn") or svc["taskDefinition"]
    if registered != svc["taskDefinition"]:
        ctx.echo(f"==> the stack registered {_name(registered)}, the service runs {_name(svc['taskDefinition'])}")
    result = _wait(ctx, registered)
    if up_failure is not None and result.outcome == "completed":
        raise up_failure  # the service is fine; something else in the stack failed
    return result


def roll_out(ctx: Context, task_definition: str, image_tag: str,
             environment: Optional[dict[str, str]] = None) -> RolloutResult:
    """Point the service at `task_definition`, wait, and on success pin `image_tag` in the stack
    config, or the next `pulumi up` would put the stack's image back. With `environment` (the new
    revision's, when it serves other models), the stack config's model keys follow it too."""
    ctx.client("ecs").update_service(cluster=ctx.stack.cluster, service=ctx.stack.service,
                                     taskDefinition=task_definition)
    result = _wait(ctx, task_definition)
    if result.outcome == "completed":
        try:
            ctx.pulumi.set_image_tag(image_tag)
            if environment is not None:
                changed = ctx.pulumi.record_model_settings(environment)
                if changed:
                    ctx.echo(f"==> stack config now says what is served: {', '.join(f'ml-api:{k}' for k in changed)}")
        except OpsError as err:
            ctx.echo(f"warning: could not record imageTag={image_tag} and the model settings in the stack config "
                     f"({err}); set them with `pulumi config` before the next `pulumi up`")
    return result


def _existing_image(ctx: Context, tag: str) -> str:
    repo_uri = image.repository_uri(ctx.aws, ctx.stack)
    if repo_uri is None:
        raise OpsError(f"ECR repository {ctx.stack.repository} not found: run `python -m ops deploy` first")
    if not image.image_exists(ctx.aws, ctx.stack, tag):
        raise OpsError(f"{repo_uri}:{tag} is not in ECR")
    return f"{repo_uri}:{tag}"


def update(ctx: Context, image_tag: Optional[str] = None, model_uri: Optional[str] = None,
           candidate_uri: Optional[str] = None, candidate_mode: Optional[str] = None) -> RolloutResult:
    """Roll out a new image on the running service: new task definition revision, no `pulumi up`.
    With a model URI (and no image tag), the running image with another published model instead."""
    ctx.echo(f"==> AWS account {ctx.aws.check_credentials()}, region {ctx.stack.region}")
    if (model_uri or candidate_uri or candidate_mode) and image_tag is None:
        return update_models(ctx, model_uri, candidate_uri, candidate_mode)
    if image_tag is None:
        target = image.push(ctx.aws, ctx.stack, ctx.run, ctx.echo)
        image_tag = target.rsplit(":", 1)[1]
    else:
        target = _existing_image(ctx, image_tag)
    ecs = ctx.client("ecs")
    svc = describe_service(ecs, ctx.stack.cluster, ctx.stack.service)
    new_arn = register_revision(ecs, svc["taskDefinition"], target)
    ctx.echo(f"==> registered {_name(new_arn)} with image tag {image_tag}; rolling out")
    return roll_out(ctx, new_arn, image_tag)


def update_models(ctx: Context, model_uri: Optional[str], candidate_uri: Optional[str],
                  candidate_mode: Optional[str]) -> RolloutResult:
    """Same image, another published model (model_store/source.py imports it when the tasks start)."""
    from ops.models import with_model_uris

    ecs = ctx.client("ecs")
    current = describe_service(ecs, ctx.stack.cluster, ctx.stack.service)["taskDefinition"]
    container = api_container(ecs, current)
    environment = with_model_uris(ctx, environment_of(container), model_uri, candidate_uri, candidate_mode)
    target = register_revision(ecs, current, container["image"], environment)
    what = ", ".join(f"{k}={v}" for k, v in (("MODEL_URI", model_uri), ("CANDIDATE_MODEL_URI", candidate_uri),
                                              ("XGB_CANDIDATE_MODE", candidate_mode)) if v)
    ctx.echo(f"==> registered {_name(target)} with the same image and {what}; rolling out")
    return roll_out(ctx, target, container["image"].rsplit(":", 1)[-1], environment)


def rollback(ctx: Context, to_tag: Optional[str] = None) -> RolloutResult:
    """Back to the previous task definition revision, or (with `to_tag`) to an image in ECR."""
    ctx.echo(f"==> AWS account {ctx.aws.check_credentials()}, region {ctx.stack.region}")
    ecs = ctx.client("ecs")
    current = describe_service(ecs, ctx.stack.cluster, ctx.stack.service)["taskDefinition"]
    environment = None
    if to_tag:
        target = register_revision(ecs, current, _existing_image(ctx, to_tag))
        tag = to_tag
    else:
        older = previous_revision(ecs, current)
        if older is None:
            raise OpsError(f"nothing to roll back to: {_name(current)} is the oldest active revision; "
                           f"`python -m ops rollback --to TAG` runs an image from ECR instead")
        container = api_container(ecs, older)
        target, tag = older, container["image"].rsplit(":", 1)[-1]
        # An older revision may serve other models (before `ops promote`): the stack config follows.
        environment = environment_of(container)
    ctx.echo(f"==> rolling back {_name(current)} -> {_name(target)} (image tag {tag})")
    return roll_out(ctx, target, tag, environment)


def promote(ctx: Context) -> RolloutResult:
    """The candidate model becomes the primary and the candidate is cleared: a new revision of the
    running task definition, same image (it holds both models), MODEL_TAG the candidate's tag."""
    ctx.echo(f"==> AWS account {ctx.aws.check_credentials()}, region {ctx.stack.region}")
    ecs = ctx.client("ecs")
    current = describe_service(ecs, ctx.stack.cluster, ctx.stack.service)["taskDefinition"]
    container = api_container(ecs, current)
    environment = environment_of(container)
    candidate_uri = environment.get(MODEL_SETTINGS["candidateUri"])
    candidate = environment.get("XGB_CANDIDATE_TAG") or candidate_uri
    if not candidate:
        raise OpsError(f"{_name(current)} runs no candidate model (XGB_CANDIDATE_TAG or CANDIDATE_MODEL_URI): nothing "
                       f"to promote; set one with `python -m ops update --candidate-uri URI` or "
                       f"`pulumi config set ml-api:candidateTag <tag>` and `python -m ops deploy`")
    promoted = {k: v for k, v in environment.items() if k not in CANDIDATE_VARIABLES | PRIMARY_VARIABLES}
    # A published candidate stays one (the task imports it from S3); a packed one is a tag in the image.
    promoted[MODEL_SETTINGS["modelUri"] if candidate_uri else MODEL_SETTINGS["modelTag"]] = candidate
    target = register_revision(ecs, current, container["image"], promoted)
    primary = environment.get("MODEL_URI") or environment.get("MODEL_TAG", "the image default")
    ctx.echo(f"==> promoting {candidate} (primary was {primary}): "
             f"{_name(current)} -> {_name(target)}; `python -m ops rollback` goes back")
    return roll_out(ctx, target, container["image"].rsplit(":", 1)[-1], promoted)


def _deletion_protected(ctx: Context) -> bool:
    elb = ctx.client("elbv2")
    try:
        alb = elb.describe_load_balancers(Names=[ctx.stack.load_balancer])["LoadBalancers"][0]
    except elb.exceptions.LoadBalancerNotFoundException:
        return False
    attributes = elb.describe_load_balancer_attributes(LoadBalancerArn=alb["LoadBalancerArn"])["Attributes"]
    return any(a["Key"] == "deletion_protection.enabled" and a["Value"] == "true" for a in attributes)


def destroy(ctx: Context, assume_yes: bool = False) -> None:
    """`pulumi destroy` all but the image repository; only once that succeeded, delete the images
    and destroy the (now empty) repository. A failed destroy leaves every image in place."""
    ctx.aws.check_credentials()
    if not assume_yes and not _confirm(
            ctx, f"This deletes every resource and image of stack '{ctx.stack.name}' "
                 f"({ctx.stack.prefix}, {ctx.stack.region}). Type the stack name to go on: ",
            (ctx.stack.name.lower(),)):
        raise OpsError("not confirmed: nothing was destroyed")
    ctx.pulumi.select()
    if _deletion_protected(ctx):
        scope = f"--stack {ctx.stack.name} --cwd {ctx.stack.infra_dir}"
        raise OpsError(f"load balancer {ctx.stack.load_balancer} has deletion protection (on for prod): "
                       f"turn it off first with `pulumi config set ml-api:deletionProtection false {scope} "
                       f"&& pulumi up {scope}`; nothing was destroyed")
    ctx.echo(f"==> pulumi destroy (stack {ctx.stack.name}), keeping the image repository for now")
    ctx.pulumi.destroy(ctx.stack.registry_urns)
    ecr = ctx.client("ecr")
    if image.repository_uri(ctx.aws, ctx.stack) is not None:
        ids = [{"imageDigest": img["imageDigest"]}
               for page in ecr.get_paginator("describe_images").paginate(repositoryName=ctx.stack.repository)
               for img in page["imageDetails"]]
        ctx.echo(f"==> deleting {len(ids)} images from {ctx.stack.repository}")
        for start in range(0, len(ids), 100):
            ecr.batch_delete_image(repositoryName=ctx.stack.repository, imageIds=ids[start:start + 100])
    ctx.echo("==> pulumi destroy (the emptied repository)")
    ctx.pulumi.destroy()
    ctx.echo("==> destroyed")
