"""Read-only verbs: `status` (service and deployments), `report` (plus targets and CloudWatch
metrics over a window) and `health` (probes through the ALB, target health)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Optional

import requests

from ops.context import Context
from ops.edge import EdgeInfo, find_edge, target_health
from ops.rollout import describe_service
from ops.table import render


def status(ctx: Context) -> dict:
    svc = describe_service(ctx.client("ecs"), ctx.stack.cluster, ctx.stack.service)
    edge = find_edge(ctx)
    image = ctx.client("ecs").describe_task_definition(
        taskDefinition=svc["taskDefinition"])["taskDefinition"]["containerDefinitions"][0]["image"]
    ctx.echo(f"service {svc['serviceName']} in cluster {ctx.stack.cluster} ({ctx.stack.region}): {svc['status']}")
    ctx.echo(f"url:             {edge.url}")
    ctx.echo(f"task definition: {svc['taskDefinition'].rsplit('/', 1)[-1]}")
    ctx.echo(f"image:           {image}")
    ctx.echo(f"tasks:           {svc['runningCount']} running / {svc['desiredCount']} desired, "
             f"{svc['pendingCount']} pending")
    rows = [(d["id"], d["status"], d.get("rolloutState", "-"), d["runningCount"], d["desiredCount"],
             d["pendingCount"], d.get("failedTasks", 0), d["taskDefinition"].rsplit("/", 1)[-1])
            for d in svc["deployments"]]
    ctx.echo(render(["deployment", "status", "rollout", "running", "desired", "pending", "failed",
                     "task definition"], rows))
    return {"service": svc, "edge": edge, "image": image}


# (label, namespace, metric, dimension set, statistic)
REPORT_METRICS = (
    ("CPU average (%)", "AWS/ECS", "CPUUtilization", "service", "Average"),
    ("CPU max (%)", "AWS/ECS", "CPUUtilization", "service", "Maximum"),
    ("memory average (%)", "AWS/ECS", "MemoryUtilization", "service", "Average"),
    ("memory max (%)", "AWS/ECS", "MemoryUtilization", "service", "Maximum"),
    ("requests", "AWS/ApplicationELB", "RequestCount", "alb", "Sum"),
    ("5xx from tasks", "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "alb_tg", "Sum"),
    ("5xx from ALB", "AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "alb", "Sum"),
    ("latency p99 (s)", "AWS/ApplicationELB", "TargetResponseTime", "alb_tg", "p99"),
)


def metric_queries(ctx: Context, edge: EdgeInfo, period: int) -> list[dict]:
    dims = {
        "service": [{"Name": "ClusterName", "Value": ctx.stack.cluster},
                    {"Name": "ServiceName", "Value": ctx.stack.service}],
        "alb": [{"Name": "LoadBalancer", "Value": edge.alb_dimension}],
        "alb_tg": [{"Name": "LoadBalancer", "Value": edge.alb_dimension},
                   {"Name": "TargetGroup", "Value": edge.target_group_dimension}],
    }
    return [{"Id": f"m{i}", "Label": label, "ReturnData": True, "MetricStat": {
        "Metric": {"Namespace": ns, "MetricName": metric, "Dimensions": dims[dim]},
        "Period": period, "Stat": stat}}
        for i, (label, ns, metric, dim, stat) in enumerate(REPORT_METRICS)]


def window_metrics(ctx: Context, edge: EdgeInfo, minutes: int,
                   now: Optional[dt.datetime] = None) -> dict[str, Optional[float]]:
    """One value per metric over the last `minutes` (a single period covering the window)."""
    end = (now or dt.datetime.now(dt.timezone.utc)).replace(second=0, microsecond=0)
    start = end - dt.timedelta(minutes=minutes)
    result = ctx.client("cloudwatch").get_metric_data(
        MetricDataQueries=metric_queries(ctx, edge, minutes * 60), StartTime=start, EndTime=end)
    by_id = {r["Id"]: r for r in result["MetricDataResults"]}
    values: dict[str, Optional[float]] = {}
    for i, (label, *_rest) in enumerate(REPORT_METRICS):
        points = [v for v in by_id.get(f"m{i}", {}).get("Values", []) if v is not None]
        values[label] = points[0] if points else None
    return values


def report(ctx: Context, minutes: int = 60) -> dict:
    info = status(ctx)
    targets = target_health(ctx, info["edge"])
    ctx.echo("")
    ctx.echo(render(["target", "port", "state", "reason"],
                    [(t["Target"]["Id"], t["Target"].get("Port"), t["TargetHealth"]["State"],
                      t["TargetHealth"].get("Reason", "")) for t in targets]))
    ctx.echo("")
    values = window_metrics(ctx, info["edge"], minutes)
    ctx.echo(render([f"last {minutes} min", "value"], list(values.items())))
    return {**info, "targets": targets, "metrics": values}


def http_status(url: str, timeout: float = 5) -> int | str:
    try:
        return requests.get(url, timeout=timeout).status_code
    except requests.RequestException as err:
        return f"unreachable ({type(err).__name__})"


def health(ctx: Context, url: Optional[str] = None,
           get: Callable[[str], Any] = http_status) -> bool:
    """True when /livez and /readyz answer 200 through the ALB and no registered target is unhealthy."""
    edge = find_edge(ctx)
    base = (url or edge.url).rstrip("/")
    probes = {path: get(f"{base}{path}") for path in ("/livez", "/readyz")}
    for path, code in probes.items():
        ctx.echo(f"GET {base}{path}: {code}")
    states: dict[str, int] = {}
    for t in target_health(ctx, edge):
        states[t["TargetHealth"]["State"]] = states.get(t["TargetHealth"]["State"], 0) + 1
    ctx.echo("targets: " + (", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none registered"))
    healthy = (all(code == 200 for code in probes.values()) and states.get("healthy", 0) > 0
               and not states.get("unhealthy"))
    ctx.echo("HEALTHY" if healthy else "UNHEALTHY")
    return healthy
