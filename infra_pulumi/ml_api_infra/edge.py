"""Public edge: ALB in the public subnets, target group of tasks (by IP), listeners, WAF.

With `certificateArn` set, HTTP:80 only redirects to HTTPS:443; without it (first bring-up, no
domain yet) HTTP:80 forwards to the service and there is no HTTPS listener.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from .settings import CONTAINER_PORT, StackSettings

READINESS_PATH = "/readyz"
# Shorter than the container's stopTimeout (service.STOP_TIMEOUT_SECONDS): the ALB stops routing
# to a draining task before ECS sends SIGKILL, so in-flight requests finish.
DEREGISTRATION_DELAY_SECONDS = 20
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
# AWS managed rule groups, in evaluation order after the rate limit.
MANAGED_RULE_GROUPS = (
    "AWSManagedRulesAmazonIpReputationList",
    "AWSManagedRulesCommonRuleSet",
    "AWSManagedRulesKnownBadInputsRuleSet",
)
# CommonRuleSet blocks request bodies over 8 KB; /predict_batch takes up to 5000 records (MBs), so
# that one rule only counts. The service enforces its own size limit (XGB_MAX_BATCH_RECORDS).
COUNT_ONLY_RULES = {"AWSManagedRulesCommonRuleSet": ["SizeRestrictions_BODY"]}


def _visibility(metric_name: str) -> dict:
    return {"cloudwatch_metrics_enabled": True, "metric_name": metric_name, "sampled_requests_enabled": True}


def waf_rules(prefix: str, rate_limit: int) -> list[dict]:
    rules = [{
        "name": "rate-limit-per-ip", "priority": 0, "action": {"block": {}},
        "statement": {"rate_based_statement": {"limit": rate_limit, "aggregate_key_type": "IP",
                                               "evaluation_window_sec": 300}},
        "visibility_config": _visibility(f"{prefix}-rate-limit"),
    }]
    for priority, group in enumerate(MANAGED_RULE_GROUPS, start=1):
        statement = {"name": group, "vendor_name": "AWS"}
        if group in COUNT_ONLY_RULES:
            statement["rule_action_overrides"] = [
                {"name": rule, "action_to_use": {"count": {}}} for rule in COUNT_ONLY_RULES[group]]
        rules.append({
            "name": group, "priority": priority, "override_action": {"none": {}},
            "statement": {"managed_rule_group_statement": statement},
            "visibility_config": _visibility(f"{prefix}-{group}"),
        })
    return rules


class Edge(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, *, vpc_id: pulumi.Input[str],
                 public_subnet_ids: list[pulumi.Input[str]], waf_log_group_arn: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:edge:Edge", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        https = bool(settings.certificate_arn)
        ingress_ports = [80, 443] if https else [80]

        self.security_group = aws.ec2.SecurityGroup(
            f"{name}-alb-sg", name=f"{settings.prefix}-alb", vpc_id=vpc_id,
            description="Internet to the ALB; ALB to the tasks on the container port",
            ingress=[{"protocol": "tcp", "from_port": p, "to_port": p, "cidr_blocks": ["0.0.0.0/0"],
                      "description": f"public {p}"} for p in ingress_ports],
            egress=[{"protocol": "tcp", "from_port": CONTAINER_PORT, "to_port": CONTAINER_PORT,
                     "cidr_blocks": [settings.vpc_cidr], "description": "to the tasks"}],
            tags=settings.tags, opts=child)
        self.load_balancer = aws.lb.LoadBalancer(
            f"{name}-alb", name=settings.prefix[:32], load_balancer_type="application",
            internal=False, subnets=public_subnet_ids, security_groups=[self.security_group.id],
            drop_invalid_header_fields=True, idle_timeout=60, tags=settings.tags, opts=child)
        self.target_group = aws.lb.TargetGroup(
            f"{name}-tg", name=settings.prefix[:32], port=CONTAINER_PORT, protocol="HTTP",
            target_type="ip", vpc_id=vpc_id, deregistration_delay=DEREGISTRATION_DELAY_SECONDS,
            health_check={"enabled": True, "path": READINESS_PATH, "matcher": "200",
                          "interval": 15, "timeout": 5, "healthy_threshold": 2,
                          "unhealthy_threshold": 3},
            tags=settings.tags, opts=child)

        forward = [{"type": "forward", "target_group_arn": self.target_group.arn}]
        if https:
            self.listener = aws.lb.Listener(
                f"{name}-https", load_balancer_arn=self.load_balancer.arn, port=443, protocol="HTTPS",
                ssl_policy=TLS_POLICY, certificate_arn=settings.certificate_arn,
                default_actions=forward, tags=settings.tags, opts=child)
            aws.lb.Listener(
                f"{name}-http", load_balancer_arn=self.load_balancer.arn, port=80, protocol="HTTP",
                default_actions=[{"type": "redirect", "redirect": {
                    "protocol": "HTTPS", "port": "443", "status_code": "HTTP_301"}}],
                tags=settings.tags, opts=child)
        else:
            self.listener = aws.lb.Listener(
                f"{name}-http", load_balancer_arn=self.load_balancer.arn, port=80, protocol="HTTP",
                default_actions=forward, tags=settings.tags, opts=child)
        scheme = "https" if https else "http"
        self.url = pulumi.Output.concat(scheme, "://", self.load_balancer.dns_name)

        self.web_acl = aws.wafv2.WebAcl(
            f"{name}-waf", name=settings.prefix, scope="REGIONAL", default_action={"allow": {}},
            description="Per-IP rate limit and AWS managed rules in front of the ALB",
            rules=waf_rules(settings.prefix, settings.waf_rate_limit),
            visibility_config=_visibility(settings.prefix), tags=settings.tags, opts=child)
        aws.wafv2.WebAclAssociation(f"{name}-waf-alb", resource_arn=self.load_balancer.arn,
                                    web_acl_arn=self.web_acl.arn, opts=child)
        aws.wafv2.WebAclLoggingConfiguration(
            f"{name}-waf-logs", resource_arn=self.web_acl.arn,
            log_destination_configs=[waf_log_group_arn], opts=child)

        self.register_outputs({"url": self.url, "albArn": self.load_balancer.arn,
                               "targetGroupArn": self.target_group.arn})
