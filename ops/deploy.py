"""Verbs that change the deployment: `deploy`, `update`, `destroy`."""

from __future__ import annotations

from typing import Optional

from ops import image
from ops.context import Context
from ops.errors import OpsError
from ops.rollout import RolloutResult, describe_service, register_revision, wait_for_rollout


def _report(ctx: Context, result: RolloutResult) -> RolloutResult:
    if result.outcome == "completed":
        ctx.echo(f"==> rollout complete: {result.task_definition.rsplit('/', 1)[-1]} is serving")
    else:
        ctx.echo(f"==> ROLLED BACK by the deployment circuit breaker to "
                 f"{result.task_definition.rsplit('/', 1)[-1] or 'the previous revision'}"
                 + (f": {result.detail}" if result.detail else ""))
        ctx.echo("    see why with `python -m ops logs --since 30m` and `python -m ops status`")
    return result


def _wait(ctx: Context, task_definition: str) -> RolloutResult:
    ctx.echo(f"==> waiting for the service to be stable (up to {ctx.rollout_timeout / 60:.0f} min)")
    return _report(ctx, wait_for_rollout(
        ctx.client("ecs"), ctx.stack.cluster, ctx.stack.service, task_definition, echo=ctx.echo,
        timeout=ctx.rollout_timeout, poll=ctx.poll_seconds, sleep=ctx.sleep, clock=ctx.clock))


def deploy(ctx: Context) -> RolloutResult:
    """Build and push the image, `pulumi up` the whole stack with it, wait until it is stable."""
    account = ctx.aws.check_credentials()
    ctx.echo(f"==> AWS account {account}, region {ctx.stack.region}, stack {ctx.stack.name}")
    ctx.pulumi.select(create=True)
    repo_uri = image.repository_uri(ctx.aws, ctx.stack)
    if repo_uri is None:
        # The image must be in ECR before the service exists, so the registry goes up first.
        ctx.echo("==> creating the ECR repository (pulumi up --target the registry)")
        ctx.pulumi.up(ctx.stack.registry_urn)
        repo_uri = image.repository_uri(ctx.aws, ctx.stack)
        if repo_uri is None:
            raise OpsError(f"`pulumi up` finished but ECR repository {ctx.stack.repository} does not exist")
    tag = image.build_and_push(ctx.aws, ctx.stack, ctx.run, repo_uri, ctx.echo)
    ctx.echo(f"==> pulumi up with imageTag {tag}")
    ctx.pulumi.set_image_tag(tag)
    ctx.pulumi.up()
    svc = describe_service(ctx.client("ecs"), ctx.stack.cluster, ctx.stack.service)
    return _wait(ctx, svc["taskDefinition"])


def update(ctx: Context, image_tag: Optional[str] = None) -> RolloutResult:
    """Roll out a new image on the running service: new task definition revision, no `pulumi up`."""
    ctx.echo(f"==> AWS account {ctx.aws.check_credentials()}, region {ctx.stack.region}")
    repo_uri = image.repository_uri(ctx.aws, ctx.stack)
    if repo_uri is None:
        raise OpsError(f"ECR repository {ctx.stack.repository} not found: run `python -m ops deploy` first")
    if image_tag is None:
        image_tag = image.build_and_push(ctx.aws, ctx.stack, ctx.run, repo_uri, ctx.echo)
    elif not image.image_exists(ctx.aws, ctx.stack, image_tag):
        raise OpsError(f"{repo_uri}:{image_tag} is not in ECR")
    ecs = ctx.client("ecs")
    svc = describe_service(ecs, ctx.stack.cluster, ctx.stack.service)
    new_arn = register_revision(ecs, svc["taskDefinition"], f"{repo_uri}:{image_tag}")
    ctx.echo(f"==> registered {new_arn.rsplit('/', 1)[-1]} with image tag {image_tag}; rolling out")
    ecs.update_service(cluster=ctx.stack.cluster, service=ctx.stack.service, taskDefinition=new_arn)
    result = _wait(ctx, new_arn)
    if result.outcome == "completed":
        # Keep the stack config in step, or the next `pulumi up` would roll the old image back out.
        try:
            ctx.pulumi.set_image_tag(image_tag)
        except OpsError as err:
            ctx.echo(f"warning: could not record imageTag={image_tag} in the stack config ({err}); "
                     f"run `pulumi config set ml-api:imageTag {image_tag}` before the next `pulumi up`")
    return result


def destroy(ctx: Context, assume_yes: bool = False) -> None:
    """Empty the ECR repository and `pulumi destroy` the stack, after typing its name."""
    ctx.aws.check_credentials()
    if not assume_yes:
        answer = ctx.confirm(f"This deletes every resource and image of stack '{ctx.stack.name}' "
                             f"({ctx.stack.prefix}, {ctx.stack.region}). Type the stack name to go on: ")
        if answer.strip() != ctx.stack.name:
            raise OpsError("not confirmed: nothing was destroyed")
    ctx.pulumi.select()
    ecr = ctx.client("ecr")
    if image.repository_uri(ctx.aws, ctx.stack) is not None:
        ids = [{"imageDigest": img["imageDigest"]}
               for page in ecr.get_paginator("describe_images").paginate(repositoryName=ctx.stack.repository)
               for img in page["imageDetails"]]
        ctx.echo(f"==> deleting {len(ids)} images from {ctx.stack.repository}")
        for start in range(0, len(ids), 100):
            ecr.batch_delete_image(repositoryName=ctx.stack.repository, imageIds=ids[start:start + 100])
    ctx.echo(f"==> pulumi destroy (stack {ctx.stack.name})")
    ctx.pulumi.destroy()
    ctx.echo("==> destroyed")
