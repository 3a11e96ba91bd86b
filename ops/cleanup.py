"""`cleanup`: delete ECR images beyond the newest N, never one that a deployment still runs."""

from __future__ import annotations

from ops.context import Context
from ops.errors import OpsError
from ops.rollout import describe_service
from ops.table import render


def images_in_use(ctx: Context) -> set[str]:
    """Tags of the images in every deployment of the service (a rollback target stays)."""
    ecs = ctx.client("ecs")
    try:
        svc = describe_service(ecs, ctx.stack.cluster, ctx.stack.service)
    except OpsError:  # no service yet (or already destroyed): nothing is in use
        return set()
    tags = set()
    for task_def in {d["taskDefinition"] for d in svc["deployments"]} | {svc["taskDefinition"]}:
        for c in ecs.describe_task_definition(taskDefinition=task_def)["taskDefinition"]["containerDefinitions"]:
            tags.add(c["image"].rsplit(":", 1)[-1])
    return tags


def cleanup(ctx: Context, keep: int, dry_run: bool = False) -> list[str]:
    """Returns the digests deleted (or that would be, with `dry_run`)."""
    ecr = ctx.client("ecr")
    try:
        images = [img for page in ecr.get_paginator("describe_images").paginate(repositoryName=ctx.stack.repository)
                  for img in page["imageDetails"]]
    except ecr.exceptions.RepositoryNotFoundException:
        raise OpsError(f"ECR repository {ctx.stack.repository} not found in {ctx.stack.region}: "
                       f"is the stack deployed?") from None
    images.sort(key=lambda img: img["imagePushedAt"], reverse=True)
    in_use = images_in_use(ctx)
    doomed = [img for img in images[keep:] if not in_use.intersection(img.get("imageTags", []))]
    ctx.echo(f"{len(images)} images in {ctx.stack.repository}; keeping the newest {keep} and those in use "
             f"({', '.join(sorted(in_use)) or 'none'}); {'would delete' if dry_run else 'deleting'} {len(doomed)}")
    if doomed:
        ctx.echo(render(["tags", "pushed", "digest"],
                        [(",".join(img.get("imageTags", [])) or "<untagged>",
                          f"{img['imagePushedAt']:%Y-%m-%d %H:%M}", img["imageDigest"][:19]) for img in doomed]))
    if doomed and not dry_run:
        for start in range(0, len(doomed), 100):  # batch_delete_image takes at most 100 ids
            batch = doomed[start:start + 100]
            result = ecr.batch_delete_image(repositoryName=ctx.stack.repository,
                                            imageIds=[{"imageDigest": img["imageDigest"]} for img in batch])
            for failure in result.get("failures", []):
                ctx.echo(f"  could not delete {failure['imageId']}: {failure.get('failureReason')}")
    return [img["imageDigest"] for img in doomed]
