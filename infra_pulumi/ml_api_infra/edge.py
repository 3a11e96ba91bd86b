"""Public edge: ALB in the public subnets, target group of tasks (by IP), listeners, WAF, DNS.

With `domainName` (and `hostedZoneId`, or an issued `certificateArn`), HTTP:80 only redirects to
HTTPS:443, the certificate covers that name, the name points at the ALB, and the `url` output is
`https://<domainName>`. Without a domain (first bring-up) HTTP:80 forwards to the service and
there is no HTTPS listener. ALB access logs go to an S3 bucket that expires them.
"""

from __future__ import annotations

import json

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


def waf_rules(prefix: str, rate_limit: int, allow_list_arn: pulumi.Input[str] | None = None) -> list[dict]:
    rate = {"limit": rate_limit, "aggregate_key_type": "IP", "evaluation_window_sec": 300}
    if allow_list_arn is not None:
        # The rate rule counts only requests NOT from the load-test allow-list; the managed rules
        # still inspect every request.
        rate["scope_down_statement"] = {"not_statement": {"statement": {
            "ip_set_reference_statement": {"arn": allow_list_arn}}}}
    rules = [{
        "name": "rate-limit-per-ip", "priority": 0, "action": {"block": {}},
        "statement": {"rate_based_statement": rate},
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


def access_log_policy(bucket_arn: str, account_id: str, elb_account_arn: str) -> str:
    """Let the region's Elastic Load Balancing account write this account's ALB logs (regions
    opened before August 2022 deliver from such an account; see `aws.elb.get_service_account`)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "AlbAccessLogs", "Effect": "Allow", "Principal": {"AWS": elb_account_arn},
        "Action": "s3:PutObject", "Resource": f"{bucket_arn}/alb/AWSLogs/{account_id}/*"}]})


class AccessLogs(pulumi.ComponentResource):
    """S3 bucket for the ALB's access logs: private, SSE-S3 (the only encryption ALB log delivery
    supports), objects expired after `logRetentionDays`."""

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:edge:AccessLogs", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = aws.s3.Bucket(
            f"{name}-alb-logs", bucket_prefix=f"{settings.prefix}-alb-logs-"[:37],
            # Logs are disposable (and expire anyway): a stack destroy must not stop at a full bucket.
            force_destroy=True, tags=settings.tags, opts=child)
        aws.s3.BucketPublicAccessBlock(
            f"{name}-alb-logs", bucket=self.bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-alb-logs", bucket=self.bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}], opts=child)
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-alb-logs", bucket=self.bucket.id,
            rules=[{"id": "expire-access-logs", "status": "Enabled", "filter": {"prefix": ""},
                    "expiration": {"days": settings.log_retention_days},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 1}}],
            opts=child)
        account_id = aws.get_caller_identity_output().account_id
        elb_account = aws.elb.get_service_account_output()
        self.policy = aws.s3.BucketPolicy(
            f"{name}-alb-logs", bucket=self.bucket.id,
            policy=pulumi.Output.all(self.bucket.arn, account_id, elb_account.arn).apply(
                lambda a: access_log_policy(*a)),
            opts=child)
        self.register_outputs({"bucket": self.bucket.bucket})


class Certificate(pulumi.ComponentResource):
    """An ACM certificate for `domainName`, validated by a DNS record in the Route 53 zone."""

    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:edge:Certificate", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.certificate = aws.acm.Certificate(
            f"{name}-cert", domain_name=settings.domain_name, validation_method="DNS",
            tags=settings.tags, opts=child)
        option = self.certificate.domain_validation_options[0]
        record = aws.route53.Record(
            f"{name}-cert-validation", zone_id=settings.hosted_zone_id,
            name=option.resource_record_name, type=option.resource_record_type,
            records=[option.resource_record_value], ttl=60, allow_overwrite=True, opts=child)
        # Waits until ACM has issued the certificate (the listener cannot use it before).
        self.validation = aws.acm.CertificateValidation(
            f"{name}-cert", certificate_arn=self.certificate.arn, validation_record_fqdns=[record.fqdn],
            opts=child)
        self.arn = self.validation.certificate_arn
        self.register_outputs({"certificateArn": self.arn})


class Edge(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, *, vpc_id: pulumi.Input[str],
                 public_subnet_ids: list[pulumi.Input[str]], waf_log_group_arn: pulumi.Input[str],
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:edge:Edge", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        access_logs = AccessLogs(name, settings, opts=child)
        https = settings.https
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
            drop_invalid_header_fields=True, idle_timeout=60,
            enable_deletion_protection=settings.alb_deletion_protection,
            access_logs={"bucket": access_logs.bucket.bucket, "prefix": "alb", "enabled": True},
            tags=settings.tags,
            # ELB checks that it can write to the bucket when access logging is switched on.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[access_logs.policy]))
        self.target_group = aws.lb.TargetGroup(
            f"{name}-tg", name=settings.prefix[:32], port=CONTAINER_PORT, protocol="HTTP",
            target_type="ip", vpc_id=vpc_id, deregistration_delay=DEREGISTRATION_DELAY_SECONDS,
            health_check={"enabled": True, "path": READINESS_PATH, "matcher": "200",
                          "interval": 15, "timeout": 5, "healthy_threshold": 2,
                          "unhealthy_threshold": 3},
            tags=settings.tags, opts=child)

        forward = [{"type": "forward", "target_group_arn": self.target_group.arn}]
        if https:
            certificate_arn = (settings.certificate_arn if settings.certificate_arn
                               else Certificate(name, settings, opts=child).arn)
            self.listener = aws.lb.Listener(
                f"{name}-https", load_balancer_arn=self.load_balancer.arn, port=443, protocol="HTTPS",
                ssl_policy=TLS_POLICY, certificate_arn=certificate_arn,
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
        if https:
            if settings.hosted_zone_id:
                aws.route53.Record(
                    f"{name}-alias", zone_id=settings.hosted_zone_id, name=settings.domain_name, type="A",
                    aliases=[{"name": self.load_balancer.dns_name, "zone_id": self.load_balancer.zone_id,
                              "evaluate_target_health": True}],
                    opts=child)
            self.url = pulumi.Output.from_input(f"https://{settings.domain_name}")
        else:
            self.url = pulumi.Output.concat("http://", self.load_balancer.dns_name)

        allow_list_arn = None
        if settings.load_test_cidrs:
            allow_list_arn = aws.wafv2.IpSet(
                f"{name}-load-test", name=f"{settings.prefix}-load-test", scope="REGIONAL",
                ip_address_version="IPV4", addresses=list(settings.load_test_cidrs),
                description="Load-test sources: the per-IP rate limit does not count them",
                tags=settings.tags, opts=child).arn
        self.web_acl = aws.wafv2.WebAcl(
            f"{name}-waf", name=settings.prefix, scope="REGIONAL", default_action={"allow": {}},
            description="Per-IP rate limit and AWS managed rules in front of the ALB",
            rules=waf_rules(settings.prefix, settings.waf_rate_limit, allow_list_arn),
            visibility_config=_visibility(settings.prefix), tags=settings.tags, opts=child)
        aws.wafv2.WebAclAssociation(f"{name}-waf-alb", resource_arn=self.load_balancer.arn,
                                    web_acl_arn=self.web_acl.arn, opts=child)
        aws.wafv2.WebAclLoggingConfiguration(
            f"{name}-waf-logs", resource_arn=self.web_acl.arn,
            log_destination_configs=[waf_log_group_arn], opts=child)

        self.register_outputs({"url": self.url, "albArn": self.load_balancer.arn,
                               "targetGroupArn": self.target_group.arn})
