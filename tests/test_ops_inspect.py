"""Read-only verbs against moto: `status`, `report` (CloudWatch through Stubber: moto has no
percentile statistics), `health` (real HTTP probes to a local server), `logs`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import threading

import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from ops import logs, status
from ops.cli import main
from ops.edge import find_edge
from ops.errors import OpsError
from ops.stack import load_stack
from ops.testing import FakeRunner, create_stack, make_context, moto_session

STACK = load_stack("prod")


@pytest.fixture
def world(monkeypatch):
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "5")
    with mock_aws():
        session = moto_session()
        yield session, create_stack(session, STACK, "v7")


def test_status_shows_service_tasks_image_and_deployments(world):
    session, created = world
    ctx, printed = make_context(session, FakeRunner())
    assert main(["status"], context=ctx) == 0
    text = "\n".join(printed)
    assert "service ml-api-prod in cluster ml-api-prod (us-west-2): ACTIVE" in text
    assert f"url:             http://{created['alb']['DNSName']}" in text
    assert "task definition: ml-api-prod:1" in text
    assert f"image:           {created['repository_uri']}:v7" in text
    assert "tasks:           5 running / 5 desired, 0 pending" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("deployment"))
    assert header.split() == ["deployment", "status", "rollout", "running", "desired", "pending",
                              "failed", "task", "definition"]
    row = lines[lines.index(header) + 2].split()
    assert row[1:] == ["PRIMARY", "COMPLETED", "5", "5", "0", "0", "ml-api-prod:1"]


def test_status_of_an_undeployed_stack_says_how_to_deploy(capsys):
    with mock_aws():
        ctx, _ = make_context(moto_session(), FakeRunner())
        assert main(["status"], context=ctx) == 2
    err = capsys.readouterr().err
    assert "ECS service ml-api-prod not found in cluster ml-api-prod" in err and "ops deploy" in err


def test_report_tabulates_targets_and_window_metrics(world):
    session, created = world
    tg_arn = created["target_group"]["TargetGroupArn"]
    session.client("elbv2").register_targets(
        TargetGroupArn=tg_arn, Targets=[{"Id": "10.0.0.11", "Port": 3000}, {"Id": "10.0.1.12", "Port": 3000}])
    ctx, printed = make_context(session, FakeRunner())
    cloudwatch = session.client("cloudwatch", region_name="us-west-2")
    stubber = Stubber(cloudwatch)
    values = [41.5, 88.0, 30.25, 35.0, 120000.0, 3.0, 0.0, 0.184]
    alb_dim = created["alb"]["LoadBalancerArn"].split(":loadbalancer/")[1]
    tg_dim = tg_arn.rsplit(":", 1)[1]
    now = dt.datetime(2026, 11, 26, 12, 30, 45, tzinfo=dt.timezone.utc)
    stubber.add_response(
        "get_metric_data",
        {"MetricDataResults": [{"Id": f"m{i}", "Label": "x", "Values": [v], "StatusCode": "Complete"}
                               for i, v in enumerate(values)]},
        {"MetricDataQueries": ANY, "StartTime": dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.timezone.utc),
         "EndTime": dt.datetime(2026, 11, 26, 12, 30, tzinfo=dt.timezone.utc)})
    ctx.aws._clients["cloudwatch"] = cloudwatch
    with stubber:
        queries = status.metric_queries(ctx, status.find_edge(ctx), 1800)
        metrics = status.window_metrics(ctx, status.find_edge(ctx), 30, now=now)
    by_label = {q["Label"]: q["MetricStat"] for q in queries}
    assert by_label["latency p99 (s)"]["Stat"] == "p99"
    assert by_label["latency p99 (s)"]["Metric"]["Dimensions"] == [
        {"Name": "LoadBalancer", "Value": alb_dim}, {"Name": "TargetGroup", "Value": tg_dim}]
    assert by_label["CPU average (%)"]["Metric"]["Dimensions"] == [
        {"Name": "ClusterName", "Value": "ml-api-prod"}, {"Name": "ServiceName", "Value": "ml-api-prod"}]
    assert all(q["Period"] == 1800 for q in by_label.values())
    assert metrics == dict(zip([q["Label"] for q in queries], values))

    stubber.add_response("get_metric_data", {"MetricDataResults": [
        {"Id": "m0", "Label": "x", "Values": [41.5], "StatusCode": "Complete"},
        {"Id": "m7", "Label": "x", "Values": [], "StatusCode": "Complete"}]}, None)
    with stubber:
        assert main(["report", "--minutes", "15"], context=ctx) == 0
    text = "\n".join(printed)
    assert "10.0.0.11  3000  healthy" in text and "10.0.1.12  3000  healthy" in text
    assert "last 15 min" in text
    lines = text.splitlines()
    assert [line.split("  ")[-1].strip() for line in lines if line.startswith("CPU average")] == ["41.5"]
    assert [line.split("  ")[-1].strip() for line in lines if line.startswith("latency p99")] == ["-"], \
        "a metric without datapoints shows '-'"


class ProbeHandler(http.server.BaseHTTPRequestHandler):
    ready = True

    def do_GET(self):
        code = 200 if self.path == "/livez" or (self.path == "/readyz" and ProbeHandler.ready) else 503
        self.send_response(code)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def probe_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ProbeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_health_probes_through_http_and_checks_targets(world, probe_server):
    session, created = world
    session.client("elbv2").register_targets(TargetGroupArn=created["target_group"]["TargetGroupArn"],
                                             Targets=[{"Id": "10.0.0.11", "Port": 3000}])
    ctx, printed = make_context(session, FakeRunner())
    ProbeHandler.ready = True
    assert main(["health", "--url", probe_server], context=ctx) == 0
    assert printed == [f"GET {probe_server}/livez: 200", f"GET {probe_server}/readyz: 200",
                       "targets: 1 healthy", "HEALTHY"]
    printed.clear()
    ProbeHandler.ready = False
    assert main(["health", "--url", probe_server], context=ctx) == 1
    assert f"GET {probe_server}/readyz: 503" in printed and printed[-1] == "UNHEALTHY"


def test_health_without_targets_or_reachable_url_is_unhealthy(world):
    session, _ = world
    ctx, printed = make_context(session, FakeRunner())
    assert status.health(ctx, url="http://127.0.0.1:9") is False
    assert printed[0].startswith("GET http://127.0.0.1:9/livez: unreachable")
    assert "targets: none registered" in printed


def test_health_probes_the_domain_when_the_stack_has_one(world):
    """With a domain the certificate covers that name, not the ALB's DNS name (an https:// probe of
    the ALB name fails with an SSL error): status and health use https://<domainName>."""
    session, created = world
    session.client("elbv2").register_targets(TargetGroupArn=created["target_group"]["TargetGroupArn"],
                                             Targets=[{"Id": "10.0.0.11", "Port": 3000}])
    ctx, printed = make_context(session, FakeRunner())
    ctx.stack = dataclasses.replace(STACK, domain_name="api.example.com")
    probed = []
    assert status.health(ctx, get=lambda url: probed.append(url) or 200) is True
    assert probed == ["https://api.example.com/livez", "https://api.example.com/readyz"]
    assert find_edge(ctx).url == "https://api.example.com"
    ctx.stack = STACK
    assert find_edge(ctx).url == f"http://{created['alb']['DNSName']}"


def put_events(session, stream, messages_at):
    client = session.client("logs")
    client.create_log_stream(logGroupName=STACK.log_group, logStreamName=stream)
    client.put_log_events(logGroupName=STACK.log_group, logStreamName=stream,
                          logEvents=[{"timestamp": ts, "message": msg} for ts, msg in messages_at])


def now_ms(minutes_ago: float = 0) -> int:
    return int((dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes_ago)).timestamp() * 1000)


def test_logs_prints_events_in_the_window_in_time_order(world):
    session, _ = world
    put_events(session, "api/api/task-a", [(now_ms(120), "old: before the window"),
                                           (now_ms(5), "GET /readyz 200"), (now_ms(1), "POST /predict 200")])
    put_events(session, "api/api/task-b", [(now_ms(3), "POST /predict 503 overloaded")])
    ctx, printed = make_context(session, FakeRunner())
    assert main(["logs", "--since", "30m"], context=ctx) == 0
    assert [line.split(" ", 3)[2:] for line in printed] == [
        ["api/api/task-a", "GET /readyz 200"], ["api/api/task-b", "POST /predict 503 overloaded"],
        ["api/api/task-a", "POST /predict 200"]]
    printed.clear()
    assert logs.tail(ctx, since="30m", pattern="overloaded") == 1
    assert printed[0].endswith("POST /predict 503 overloaded")


def test_logs_follow_prints_only_new_events(world):
    session, _ = world
    put_events(session, "api/api/task-a", [(now_ms(2), "first")])
    polls = []

    def sleep(_seconds):
        polls.append(1)
        if len(polls) == 1:
            session.client("logs").put_log_events(
                logGroupName=STACK.log_group, logStreamName="api/api/task-a",
                logEvents=[{"timestamp": now_ms(0), "message": "second"}])
        else:
            raise KeyboardInterrupt

    ctx, printed = make_context(session, FakeRunner())
    ctx.sleep = sleep
    assert main(["logs", "--follow"], context=ctx) == 130
    assert [line.rsplit(" ", 1)[-1] for line in printed] == ["first", "second"]


def test_logs_bad_duration_and_missing_group(world):
    session, _ = world
    ctx, _ = make_context(session, FakeRunner())
    with pytest.raises(OpsError, match="bad duration"):
        logs.tail(ctx, since="ten minutes")
    session.client("logs").delete_log_group(logGroupName=STACK.log_group)
    with pytest.raises(OpsError, match="log group /ecs/ml-api-prod not found"):
        logs.tail(ctx, since="5m")
