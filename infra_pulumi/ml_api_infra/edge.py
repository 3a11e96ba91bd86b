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
API_KEY_HEADER = "x-api-key"  # WAF matches header names in lower case
# Regions opened before August 2022 deliver ALB access logs from their Elastic Load Balancing
# account (https://docs.aws.amazon.com/elasticloadbalancing/latest/application/enable-access-logging.html);
# every other region from the log-delivery service principal below.
ELB_ACCOUNT_BY_REGION = {
    "us-east-1": "127311923021", "us-east-2": "033677994240", "us-west-1": "027434742980",
    "us-west-2": "797873946194", "af-south-1": "098369216593", "ap-east-1": "754344448648",
    "ap-southeast-3": "589379963580", "ap-south-1": "718504428378", "ap-northeast-3": "383597477331",
    "ap-northeast-2": "600734575887", "ap-southeast-1": "114774131450", "ap-southeast-2": "783225319266",
    "ap-northeast-1": "582318560864", "ca-central-1": "985666609251", "eu-central-1": "054676820928",
    "eu-west-1": "156460612806", "eu-west-2": "652711504416", "eu-south-1": "635631232127",
    "eu-west-3": "009996457667", "eu-north-1": "897822967062", "me-south-1": "076674570225",
    "sa-east-1": "507241528517", "us-gov-west-1": "048591011584", "us-gov-east-1": "190560391635",
}
LOG_DELIVERY_PRINCIPAL = "logdelivery.elasticloadbalancing.amazonaws.com"
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


def _valid_key(api_key: pulumi.Input[str]) -> dict:
    return {"byte_match_statement": {
        "field_to_match": {"single_header": {"name": API_KEY_HEADER}}, "positional_constraint": "EXACTLY",
        "search_string": api_key, "text_transformations": [{"priority": 0, "type": "NONE"}]}}


def waf_rules(prefix: str, rate_limit: int, allow_list_arn: pulumi.Input[str] | None = None,
              api_key: pulumi.Input[str] | None = None, key_rate_limit: int = 0) -> list[dict]:
    """The per-IP rate rule counts only requests that are neither from the load-test allow-list nor
    carry the stack's valid X-API-Key (a fleet behind one NAT IP is not one abuser); requests with
    a key are limited per key value instead (CUSTOM_KEYS on the header). The managed rules still
    inspect every request."""
    exempt = []
    if allow_list_arn is not None:
        exempt.append({"ip_set_reference_statement": {"arn": allow_list_arn}})
    if api_key is not None:
        exempt.append(_valid_key(api_key))
    rate = {"limit": rate_limit, "aggregate_key_type": "IP", "evaluation_window_sec": 300}
    if exempt:
        either = exempt[0] if len(exempt) == 1 else {"or_statement": {"statements": exempt}}
        rate["scope_down_statement"] = {"not_statement": {"statement": either}}
    rules = [{
        "name": "rate-limit-per-ip", "priority": 0, "action": {"block": {}},
        "statement": {"rate_based_statement": rate},
        "visibility_config": _visibility(f"{prefix}-rate-limit"),
    }]
    if api_key is not None and key_rate_limit:
        rules.append({
            "name": "rate-limit-per-api-key", "priority": 1, "action": {"block": {}},
            "statement": {"rate_based_statement": {
                "limit": key_rate_limit, "aggregate_key_type": "CUSTOM_KEYS", "evaluation_window_sec": 300,
                "custom_keys": [{"header": {"name": API_KEY_HEADER,
                                            "text_transformations": [{"priority": 0, "type": "NONE"}]}}]}},
            "visibility_config": _visibility(f"{prefix}-rate-limit-per-key"),
        })
    for priority, group in enumerate(MANAGED_RULE_GROUPS, start=len(rules)):
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


def log_delivery_principal(region: str) -> dict:
    """Who writes ALB access logs in `region`: its ELB account (older regions), else the service principal."""
    if region in ELB_ACCOUNT_BY_REGION:
        partition = "aws-us-gov" if region.startswith("us-gov-") else "aws"
        return {"AWS": f"arn:{partition}:iam::{ELB_ACCOUNT_BY_REGION[region]}:root"}
    return {"Service": LOG_DELIVERY_PRINCIPAL}


def access_log_policy(bucket_arn: str, account_id: str, region: str) -> str:
    """Let the region's log delivery write this account's ALB logs under alb/AWSLogs/<account>/."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "AlbAccessLogs", "Effect": "Allow", "Principal": log_delivery_principal(region),
        "Action": "s3:PutObject", "Resource": f"{bucket_arn}/alb/AWSLogs/{account_id}/*"}]})


# WAF logs only what it blocked or counted (a log line per allowed request costs more than the
# requests themselves at the seed's load): https://docs.aws.amazon.com/waf/latest/developerguide/logging-management.html
WAF_LOGGING_FILTER = {"default_behavior": "DROP", "filters": [{
    "behavior": "KEEP", "requirement": "MEETS_ANY",
    "conditions": [{"action_condition": {"action": "BLOCK"}}, {"action_condition": {"action": "COUNT"}}]}]}


def waf_log_resource_policy(account_id: str, region: str) -> str:
    """CloudWatch Logs resource policy for WAF's log delivery, written explicitly: otherwise WAF adds
    one per Web ACL to the account's (10 policies, 5,120 characters) and fails once that is full
    (https://docs.aws.amazon.com/waf/latest/developerguide/logging-cw-logs.html)."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "AwsWafLogsDelivery", "Effect": "Allow", "Principal": {"Service": "delivery.logs.amazonaws.com"},
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": f"arn:aws:logs:{region}:{account_id}:log-group:aws-waf-logs-*:log-stream:*",
        "Condition": {"StringEquals": {"aws:SourceAccount": account_id},
                      "ArnLike": {"aws:SourceArn": f"arn:aws:logs:{region}:{account_id}:*"}}}]})


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
        self.policy = aws.s3.BucketPolicy(
            f"{name}-alb-logs", bucket=self.bucket.id,
            policy=pulumi.Output.all(self.bucket.arn, account_id).apply(
                lambda a: access_log_policy(*a, settings.region)),
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
        access_logs = AccessLogs(name, settings, opts=child) if settings.alb_access_logs else None
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
            drop_invalid_header_fields=True, idle_timeout=settings.alb_idle_timeout,
            enable_deletion_protection=settings.alb_deletion_protection,
            access_logs=({"bucket": access_logs.bucket.bucket, "prefix": "alb", "enabled": True}
                         if access_logs else None),
            tags=settings.tags,
            # ELB checks that it can write to the bucket when access logging is switched on.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[access_logs.policy] if access_logs else []))
        self.target_group = aws.lb.TargetGroup(
            f"{name}-tg", name=settings.prefix[:32], port=CONTAINER_PORT, protocol="HTTP",
            target_type="ip", vpc_id=vpc_id, deregistration_delay=settings.deregistration_delay_seconds,
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
            description="Rate limits (per IP without a valid key, per key) and AWS managed rules in front of the ALB",
            rules=waf_rules(settings.prefix, settings.waf_rate_limit, allow_list_arn, settings.api_key,
                            settings.waf_key_rate_limit),
            visibility_config=_visibility(settings.prefix), tags=settings.tags, opts=child)
        aws.wafv2.WebAclAssociation(f"{name}-waf-alb", resource_arn=self.load_balancer.arn,
                                    web_acl_arn=self.web_acl.arn, opts=child)
        log_policy = aws.cloudwatch.LogResourcePolicy(
            f"{name}-waf-logs", policy_name=f"{settings.prefix}-waf-logs",
            policy_document=aws.get_caller_identity_output().account_id.apply(
                lambda account: waf_log_resource_policy(account, settings.region)),
            opts=child)
        aws.wafv2.WebAclLoggingConfiguration(
            f"{name}-waf-logs", resource_arn=self.web_acl.arn,
            log_destination_configs=[waf_log_group_arn],
            logging_filter=WAF_LOGGING_FILTER if settings.waf_log == "blocked" else None,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[log_policy]))

        self.register_outputs({"url": self.url, "albArn": self.load_balancer.arn,
                               "targetGroupArn": self.target_group.arn})
