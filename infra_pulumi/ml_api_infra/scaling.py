"""Application Auto Scaling of the service's desired count: target tracking on three signals.

Each policy scales out when its metric is above target and in only when all are below, so the
busiest signal wins. Scale-out reacts after 60 s; scale-in waits 5 min so a short lull does not
drop tasks that the next burst needs (a new task takes ~1-2 min to pass /readyz).
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from .settings import StackSettings


class Scaling(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, *, cluster_name: pulumi.Input[str],
                 service_name: pulumi.Input[str], alb_arn_suffix: pulumi.Input[str],
                 target_group_arn_suffix: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:scaling:Scaling", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.target = aws.appautoscaling.Target(
            f"{name}-target", service_namespace="ecs", scalable_dimension="ecs:service:DesiredCount",
            resource_id=pulumi.Output.concat("service/", cluster_name, "/", service_name),
            min_capacity=settings.min_capacity, max_capacity=settings.max_capacity,
            tags=settings.tags, opts=child)

        request_label = pulumi.Output.concat(alb_arn_suffix, "/", target_group_arn_suffix)
        trackers = [
            ("cpu", "ECSServiceAverageCPUUtilization", settings.cpu_target, None),
            ("memory", "ECSServiceAverageMemoryUtilization", settings.memory_target, None),
            ("requests", "ALBRequestCountPerTarget", settings.requests_per_target, request_label),
        ]
        self.policies = []
        for suffix, metric, target_value, label in trackers:
            predefined = {"predefined_metric_type": metric}
            if label is not None:
                predefined["resource_label"] = label
            self.policies.append(aws.appautoscaling.Policy(
                f"{name}-{suffix}", name=f"{settings.prefix}-{suffix}", policy_type="TargetTrackingScaling",
                service_namespace=self.target.service_namespace,
                scalable_dimension=self.target.scalable_dimension, resource_id=self.target.resource_id,
                target_tracking_scaling_policy_configuration={
                    "target_value": target_value, "predefined_metric_specification": predefined,
                    "scale_out_cooldown": settings.scale_out_cooldown,
                    "scale_in_cooldown": settings.scale_in_cooldown},
                opts=child))
        self.register_outputs({"resourceId": self.target.resource_id})
