"""CloudWatch: log groups (created first: tasks and WAF write to them), alarms and a dashboard."""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from .settings import StackSettings


class LogGroups(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:observability:LogGroups", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.app = aws.cloudwatch.LogGroup(
            f"{name}-app", name=f"/ecs/{settings.prefix}",
            retention_in_days=settings.log_retention_days, tags=settings.tags, opts=child)
        # WAF only logs to groups whose name starts with aws-waf-logs-.
        self.waf = aws.cloudwatch.LogGroup(
            f"{name}-waf", name=f"aws-waf-logs-{settings.prefix}",
            retention_in_days=settings.log_retention_days, tags=settings.tags, opts=child)
        self.register_outputs({"appLogGroup": self.app.name, "wafLogGroup": self.waf.name})


def alarm_specs(settings: StackSettings) -> list[dict]:
    """Each alarm: what it watches and when it fires. `dims` names the dimension set to use."""
    return [
        {"key": "target-5xx", "namespace": "AWS/ApplicationELB", "metric": "HTTPCode_Target_5XX_Count",
         "dims": "alb_tg", "statistic": "Sum", "comparison": "GreaterThanThreshold", "threshold": 5,
         "periods": 3, "missing": "notBreaching",
         "description": "the service answered more than 5 errors a minute for 3 minutes"},
        {"key": "elb-5xx", "namespace": "AWS/ApplicationELB", "metric": "HTTPCode_ELB_5XX_Count",
         "dims": "alb", "statistic": "Sum", "comparison": "GreaterThanThreshold", "threshold": 5,
         "periods": 3, "missing": "notBreaching",
         "description": "the ALB answered 5xx itself (no healthy target, timeouts) for 3 minutes"},
        {"key": "p99-latency", "namespace": "AWS/ApplicationELB", "metric": "TargetResponseTime",
         "dims": "alb_tg", "extended_statistic": "p99", "comparison": "GreaterThanThreshold",
         "threshold": settings.p99_latency_threshold_seconds, "periods": 3, "missing": "notBreaching",
         "description": f"p99 latency above {settings.p99_latency_threshold_seconds}s for 3 minutes"},
        {"key": "unhealthy-hosts", "namespace": "AWS/ApplicationELB", "metric": "UnHealthyHostCount",
         "dims": "alb_tg", "statistic": "Maximum", "comparison": "GreaterThanThreshold", "threshold": 0,
         "periods": 3, "missing": "notBreaching",
         "description": "a task failed /readyz for 3 minutes"},
        {"key": "cpu-high", "namespace": "AWS/ECS", "metric": "CPUUtilization", "dims": "service",
         "statistic": "Average", "comparison": "GreaterThanThreshold", "threshold": 85,
         "periods": 5, "missing": "notBreaching",
         "description": "average CPU above 85% for 5 minutes: scaling is at its maximum or too slow"},
        {"key": "running-below-min", "namespace": "ECS/ContainerInsights", "metric": "RunningTaskCount",
         "dims": "service", "statistic": "Minimum", "comparison": "LessThanThreshold",
         "threshold": settings.min_capacity, "periods": 3,
         # notBreaching: Container Insights has no data for a service that is still coming up, and
         # the first bring-up must not page; a service that stopped reporting still trips elb-5xx.
         "missing": "notBreaching",
         "description": f"fewer than {settings.min_capacity} running tasks for 3 minutes"},
    ]


def dashboard_body(region: str, cluster: str, service: str, alb: str, target_group: str) -> str:
    alb_dims = ["LoadBalancer", alb]
    tg_dims = ["TargetGroup", target_group, "LoadBalancer", alb]
    svc_dims = ["ClusterName", cluster, "ServiceName", service]

    def widget(title: str, metrics: list, x: int, y: int, stat: str = "Sum") -> dict:
        return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6, "properties": {
            "title": title, "region": region, "stat": stat, "period": 60, "view": "timeSeries",
            "metrics": metrics}}

    widgets = [
        widget("Requests / min", [["AWS/ApplicationELB", "RequestCount", *alb_dims]], 0, 0),
        widget("5xx / min", [["AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", *tg_dims],
                             ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", *alb_dims]], 12, 0),
        widget("Latency (s)", [["AWS/ApplicationELB", "TargetResponseTime", *tg_dims, {"stat": "p50"}],
                               ["AWS/ApplicationELB", "TargetResponseTime", *tg_dims, {"stat": "p99"}]],
               0, 6, stat="p99"),
        widget("Targets", [["AWS/ApplicationELB", "HealthyHostCount", *tg_dims],
                           ["AWS/ApplicationELB", "UnHealthyHostCount", *tg_dims]], 12, 6, stat="Maximum"),
        widget("CPU / memory (%)", [["AWS/ECS", "CPUUtilization", *svc_dims],
                                    ["AWS/ECS", "MemoryUtilization", *svc_dims]], 0, 12, stat="Average"),
        widget("Tasks", [["ECS/ContainerInsights", "RunningTaskCount", *svc_dims],
                         ["ECS/ContainerInsights", "DesiredTaskCount", *svc_dims],
                         ["ECS/ContainerInsights", "PendingTaskCount", *svc_dims]], 12, 12, stat="Average"),
    ]
    return json.dumps({"widgets": widgets})


def deployment_failure_pattern(service_arn: str) -> str:
    """EventBridge pattern: ECS reports this service's deployment failed (circuit breaker)."""
    return json.dumps({"source": ["aws.ecs"], "detail-type": ["ECS Deployment State Change"],
                       "resources": [service_arn], "detail": {"eventName": ["SERVICE_DEPLOYMENT_FAILED"]}})


# SNS's default topic policy: the owning account (CloudWatch alarms included) may use the topic.
OWNER_ACTIONS = ["SNS:GetTopicAttributes", "SNS:SetTopicAttributes", "SNS:AddPermission",
                 "SNS:RemovePermission", "SNS:DeleteTopic", "SNS:Subscribe",
                 "SNS:ListSubscriptionsByTopic", "SNS:Publish"]


def topic_policy(topic_arn: str, account_id: str, rule_arn: str) -> str:
    """SNS's default policy, plus EventBridge publishing for the deployment-failure rule only."""
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Sid": "AccountOwner", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": OWNER_ACTIONS,
         "Resource": topic_arn, "Condition": {"StringEquals": {"AWS:SourceOwner": account_id}}},
        {"Sid": "DeploymentFailures", "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
         "Action": "sns:Publish", "Resource": topic_arn,
         "Condition": {"ArnEquals": {"aws:SourceArn": rule_arn}}},
    ]})


class Monitoring(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, *, cluster_name: pulumi.Input[str],
                 service_name: pulumi.Input[str], service_arn: pulumi.Input[str],
                 alb_arn_suffix: pulumi.Input[str],
                 target_group_arn_suffix: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:observability:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.topic = aws.sns.Topic(f"{name}-alarms", name=f"{settings.prefix}-alarms",
                                   tags=settings.tags, opts=child)
        if settings.alarm_email:
            aws.sns.TopicSubscription(f"{name}-alarm-email", topic=self.topic.arn, protocol="email",
                                      endpoint=settings.alarm_email, opts=child)
        dimensions = {
            "alb": {"LoadBalancer": alb_arn_suffix},
            "alb_tg": {"LoadBalancer": alb_arn_suffix, "TargetGroup": target_group_arn_suffix},
            "service": {"ClusterName": cluster_name, "ServiceName": service_name},
        }
        self.alarms = {}
        for spec in alarm_specs(settings):
            statistic = ({"extended_statistic": spec["extended_statistic"]} if "extended_statistic" in spec
                         else {"statistic": spec["statistic"]})
            self.alarms[spec["key"]] = aws.cloudwatch.MetricAlarm(
                f"{name}-{spec['key']}", name=f"{settings.prefix}-{spec['key']}",
                alarm_description=spec["description"], namespace=spec["namespace"],
                metric_name=spec["metric"], dimensions=dimensions[spec["dims"]], period=60,
                evaluation_periods=spec["periods"], datapoints_to_alarm=spec["periods"],
                comparison_operator=spec["comparison"], threshold=spec["threshold"],
                treat_missing_data=spec["missing"], alarm_actions=[self.topic.arn],
                ok_actions=[self.topic.arn], tags=settings.tags, **statistic, opts=child)

        # Seed parity: a failed ECS deployment (circuit breaker) notifies the same topic as the alarms.
        self.deployment_failed = aws.cloudwatch.EventRule(
            f"{name}-deployment-failed", name=f"{settings.prefix}-deployment-failed",
            description="ECS deployment of the service failed (circuit breaker)",
            event_pattern=pulumi.Output.from_input(service_arn).apply(deployment_failure_pattern),
            tags=settings.tags, opts=child)
        aws.cloudwatch.EventTarget(f"{name}-deployment-failed", rule=self.deployment_failed.name,
                                   arn=self.topic.arn, opts=child)
        aws.sns.TopicPolicy(
            f"{name}-alarms", arn=self.topic.arn,
            policy=pulumi.Output.all(self.topic.arn, aws.get_caller_identity_output().account_id,
                                     self.deployment_failed.arn).apply(lambda a: topic_policy(*a)),
            opts=child)

        self.dashboard = aws.cloudwatch.Dashboard(
            f"{name}-dashboard", dashboard_name=settings.prefix,
            dashboard_body=pulumi.Output.all(cluster_name, service_name, alb_arn_suffix,
                                             target_group_arn_suffix).apply(
                lambda a: dashboard_body(settings.region, *a)),
            opts=child)
        self.dashboard_url = pulumi.Output.concat(
            f"https://{settings.region}.console.aws.amazon.com/cloudwatch/home?region={settings.region}"
            "#dashboards:name=", self.dashboard.dashboard_name)
        self.register_outputs({"dashboardUrl": self.dashboard_url,
                               "alarmTopicArn": self.topic.arn})
