"""Find the stack's ALB and target group by name (URL, CloudWatch dimensions, target health)."""

from __future__ import annotations

from dataclasses import dataclass

import botocore.exceptions

from ops.context import Context
from ops.errors import OpsError


@dataclass(frozen=True)
class EdgeInfo:
    url: str
    load_balancer_arn: str
    target_group_arn: str

    @property
    def alb_dimension(self) -> str:
        """`app/<name>/<id>`, the LoadBalancer dimension of AWS/ApplicationELB metrics."""
        return self.load_balancer_arn.split(":loadbalancer/", 1)[1]

    @property
    def target_group_dimension(self) -> str:
        """`targetgroup/<name>/<id>`, the TargetGroup dimension."""
        return self.target_group_arn.rsplit(":", 1)[1]


def find_edge(ctx: Context) -> EdgeInfo:
    elb = ctx.client("elbv2")
    try:
        alb = elb.describe_load_balancers(Names=[ctx.stack.load_balancer])["LoadBalancers"][0]
        tg = elb.describe_target_groups(Names=[ctx.stack.target_group])["TargetGroups"][0]
    except botocore.exceptions.ClientError as err:
        raise OpsError(f"load balancer or target group {ctx.stack.load_balancer} not found in "
                       f"{ctx.stack.region}: is the stack deployed? ({err.response['Error']['Code']})") from None
    if ctx.stack.domain_name:
        # The certificate covers the domain, never the ALB's own DNS name.
        url = f"https://{ctx.stack.domain_name}"
    else:
        listeners = elb.describe_listeners(LoadBalancerArn=alb["LoadBalancerArn"])["Listeners"]
        scheme = "https" if any(l["Protocol"] == "HTTPS" for l in listeners) else "http"
        url = f"{scheme}://{alb['DNSName']}"
    return EdgeInfo(url, alb["LoadBalancerArn"], tg["TargetGroupArn"])


def target_health(ctx: Context, edge: EdgeInfo) -> list[dict]:
    return ctx.client("elbv2").describe_target_health(
        TargetGroupArn=edge.target_group_arn)["TargetHealthDescriptions"]
