"""`scale N`: set the desired task count, within the autoscaling bounds.

Target tracking keeps adjusting the count afterwards: a manual scale-out holds while the metrics
are below target only until the scale-in cooldown passes. To change the floor, set minCapacity.
"""

from __future__ import annotations

from ops.context import Context
from ops.errors import OpsError
from ops.rollout import describe_service


def bounds(ctx: Context) -> tuple[int, int]:
    targets = ctx.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace="ecs", ResourceIds=[ctx.stack.scaling_resource_id],
        ScalableDimension="ecs:service:DesiredCount")["ScalableTargets"]
    if not targets:
        raise OpsError(f"no scalable target {ctx.stack.scaling_resource_id}: is the stack deployed?")
    return targets[0]["MinCapacity"], targets[0]["MaxCapacity"]


def scale(ctx: Context, desired: int) -> int:
    low, high = bounds(ctx)
    if not low <= desired <= high:
        raise OpsError(f"{desired} tasks is outside the autoscaling bounds {low}..{high}; change "
                       f"minCapacity/maxCapacity in the stack config and `pulumi up` to move them")
    ecs = ctx.client("ecs")
    before = describe_service(ecs, ctx.stack.cluster, ctx.stack.service)["desiredCount"]
    ecs.update_service(cluster=ctx.stack.cluster, service=ctx.stack.service, desiredCount=desired)
    ctx.echo(f"desired count {before} -> {desired} (bounds {low}..{high}); target tracking may "
             f"adjust it again after its cooldown")
    return desired
