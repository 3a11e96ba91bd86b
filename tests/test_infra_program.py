"""Policy for the Pulumi program, checked on what it declares under `pulumi.runtime.set_mocks`.

The program runs once with the committed prod stack config (`Pulumi.prod.yaml`); each test reads
the recorded resource inputs (camelCase, as the engine receives them). Messages name the resource.
"""

from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "infra_pulumi"))

from ml_api_infra.mocks import Program, run_program, stack_config  # noqa: E402

TASK_DEF = "aws:ecs/taskDefinition:TaskDefinition"
SERVICE = "aws:ecs/service:Service"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
POLICY = "aws:appautoscaling/policy:Policy"


@pytest.fixture(scope="module")
def prod() -> Program:
    return run_program(stack_config("prod"))


def container(program: Program) -> dict:
    task = program.one(TASK_DEF)
    definitions = json.loads(task.inputs["containerDefinitions"])
    assert len(definitions) == 1, f"{task.name}: expected one container, got {len(definitions)}"
    return definitions[0]


def test_prod_stack_config_holds_the_seed_values():
    config = stack_config("prod")
    expected = {"aws:region": "us-west-2", "ml-api:project": "ml-api", "ml-api:environment": "prod",
                "ml-api:minCapacity": "5", "ml-api:maxCapacity": "20", "ml-api:cpuTarget": "70",
                "ml-api:memoryTarget": "80", "ml-api:taskCpu": "1024", "ml-api:taskMemory": "2048"}
    assert {k: config.get(k) for k in expected} == expected


def test_every_concern_is_a_component(prod):
    components = {r.type for r in prod.resources if r.type.startswith("ml-api:")}
    assert components == {
        "ml-api:network:Network", "ml-api:registry:Registry", "ml-api:iam:TaskRoles",
        "ml-api:service:Service", "ml-api:edge:Edge", "ml-api:scaling:Scaling",
        "ml-api:observability:LogGroups", "ml-api:observability:Monitoring"}


# --- network -------------------------------------------------------------------------------------

def test_subnets_span_two_azs_per_tier_inside_the_vpc(prod):
    vpc = prod.one("aws:ec2/vpc:Vpc")
    vpc_net = ipaddress.ip_network(vpc.inputs["cidrBlock"])
    subnets = prod.of_type("aws:ec2/subnet:Subnet")
    for tier in ("public", "private"):
        tiered = [s for s in subnets if s.inputs["tags"]["Tier"] == tier]
        azs = {s.inputs["availabilityZone"] for s in tiered}
        assert len(azs) >= 2, f"{tier} subnets {[s.name for s in tiered]} span only {azs}"
    for s in subnets:
        assert ipaddress.ip_network(s.inputs["cidrBlock"]).subnet_of(vpc_net), f"{s.name} outside {vpc.name}"
        assert not s.inputs.get("mapPublicIpOnLaunch"), f"{s.name} hands out public IPs"
    cidrs = [ipaddress.ip_network(s.inputs["cidrBlock"]) for s in subnets]
    assert not any(a.overlaps(b) for i, a in enumerate(cidrs) for b in cidrs[i + 1:]), "subnets overlap"


def test_private_subnets_route_out_through_nat_and_s3_endpoint(prod):
    nats = prod.of_type("aws:ec2/natGateway:NatGateway")
    assert len(nats) == 1, f"default is one NAT gateway, got {[n.name for n in nats]}"
    assert nats[0].inputs["subnetId"].endswith("public-0-id"), f"{nats[0].name} not in a public subnet"
    private_rts = [r for r in prod.of_type("aws:ec2/routeTable:RouteTable") if "-private-" in r.name]
    assert len(private_rts) == 2
    for rt in private_rts:
        routes = rt.inputs["routes"]
        assert [r.get("natGatewayId") for r in routes] == [f"{nats[0].name}-id"], f"{rt.name}: {routes}"
    public_rt = prod.one("aws:ec2/routeTable:RouteTable", "public-rt")
    assert public_rt.inputs["routes"][0]["gatewayId"].endswith("igw-id"), f"{public_rt.name} not via IGW"
    s3 = prod.one("aws:ec2/vpcEndpoint:VpcEndpoint")
    assert s3.inputs["vpcEndpointType"] == "Gateway" and s3.inputs["serviceName"].endswith(".s3")
    assert sorted(s3.inputs["routeTableIds"]) == sorted(f"{rt.name}-id" for rt in private_rts), s3.name


def test_nat_per_az_option_gives_each_private_subnet_its_own_nat():
    program = run_program({**stack_config(), "ml-api:natPerAz": "true", "ml-api:azCount": "3"})
    nats = program.of_type("aws:ec2/natGateway:NatGateway")
    assert len(nats) == 3, [n.name for n in nats]
    used = {r.inputs["routes"][0]["natGatewayId"]
            for r in program.of_type("aws:ec2/routeTable:RouteTable") if "-private-" in r.name}
    assert used == {f"{n.name}-id" for n in nats}


# --- registry ------------------------------------------------------------------------------------

def test_ecr_scans_on_push_with_immutable_tags_and_a_lifecycle(prod):
    repo = prod.one("aws:ecr/repository:Repository")
    assert repo.inputs["imageScanningConfiguration"] == {"scanOnPush": True}, repo.name
    assert repo.inputs["imageTagMutability"] == "IMMUTABLE", repo.name
    assert not repo.inputs.get("forceDelete"), f"{repo.name}: destroy must not silently drop images"
    lifecycle = prod.one("aws:ecr/lifecyclePolicy:LifecyclePolicy")
    rules = json.loads(lifecycle.inputs["policy"])["rules"]
    assert {r["selection"]["tagStatus"] for r in rules} == {"untagged", "any"}, lifecycle.name
    keep = next(r for r in rules if r["selection"]["countType"] == "imageCountMoreThan")
    assert keep["selection"]["countNumber"] == 30, lifecycle.name
    assert keep["rulePriority"] == max(r["rulePriority"] for r in rules), \
        f"{lifecycle.name}: the tagStatus=any rule must have the lowest priority"


# --- service -------------------------------------------------------------------------------------

def test_cluster_has_container_insights(prod):
    cluster = prod.one("aws:ecs/cluster:Cluster")
    assert {"name": "containerInsights", "value": "enabled"} in cluster.inputs["settings"], cluster.name


def test_task_definition_is_fargate_1024_2048(prod):
    task = prod.one(TASK_DEF)
    assert task.inputs["requiresCompatibilities"] == ["FARGATE"], task.name
    assert task.inputs["networkMode"] == "awsvpc", task.name
    assert (task.inputs["cpu"], task.inputs["memory"]) == ("1024", "2048"), task.name


def test_container_is_hardened(prod):
    c = container(prod)
    assert c["user"] not in ("", "0", "root") and c["user"] == "1034", f"container {c['name']}: user {c['user']}"
    assert c["readonlyRootFilesystem"] is True, f"container {c['name']} has a writable root"
    task = prod.one(TASK_DEF)
    volumes = {v["name"] for v in task.inputs["volumes"]}
    tmp = [m for m in c["mountPoints"] if m["containerPath"] == "/tmp"]
    assert tmp and tmp[0]["sourceVolume"] in volumes and not tmp[0]["readOnly"], \
        f"{task.name}: /tmp must be a writable task volume, got {c['mountPoints']}"


def test_container_logs_probes_and_stops_gracefully(prod):
    c = container(prod)
    log = c["logConfiguration"]
    assert log["logDriver"] == "awslogs", c["name"]
    assert log["options"]["awslogs-group"] == "/ecs/ml-api-prod"
    assert log["options"]["awslogs-region"] == "us-west-2"
    probe = " ".join(c["healthCheck"]["command"])
    assert "127.0.0.1:3000/livez" in probe, f"container health check probes {probe}"
    assert c["healthCheck"]["startPeriod"] > 0
    assert 30 <= c["stopTimeout"] <= 60, f"stopTimeout {c['stopTimeout']}"
    tg = prod.one("aws:lb/targetGroup:TargetGroup")
    assert tg.inputs["deregistrationDelay"] < c["stopTimeout"], \
        f"{tg.name}: deregistration delay must end before the task is killed"
    assert c["portMappings"] == [{"containerPort": 3000, "protocol": "tcp"}]


def test_container_environment(prod):
    env = {e["name"]: e["value"] for e in container(prod)["environment"]}
    assert env["XGB_WORKERS"] == "1", "one worker per vCPU on a 1-vCPU task"
    assert env["XGB_RANGE_CHECK"] == "warn"
    assert env["TMPDIR"] == "/tmp"
    assert env["BENTOML_HOME"].startswith("/tmp/"), (
        "task container: BENTOML_HOME must be on the writable /tmp volume (serve creates directories there; the root is read-only)"
    )
    assert "XGB_API_KEY" not in env, "the API key must never be a plain environment variable"
    assert "secrets" not in container(prod), "no API key configured, so no secret"


def test_service_runs_privately_with_circuit_breaker(prod):
    svc = prod.one(SERVICE)
    net = svc.inputs["networkConfiguration"]
    assert net["assignPublicIp"] is False, f"{svc.name} gets public IPs"
    assert all("-private-" in s for s in net["subnets"]), f"{svc.name} subnets {net['subnets']}"
    assert svc.inputs["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}, svc.name
    assert svc.inputs["healthCheckGracePeriodSeconds"] >= 30, svc.name
    assert svc.inputs["launchType"] == "FARGATE"
    assert svc.inputs["desiredCount"] == 5, f"{svc.name} starts at minCapacity"
    assert svc.inputs["loadBalancers"][0]["containerPort"] == 3000


def test_task_security_group_admits_only_the_alb(prod):
    task_sg = prod.one("aws:ec2/securityGroup:SecurityGroup", "task-sg")
    alb_sg = prod.one("aws:ec2/securityGroup:SecurityGroup", "alb-sg")
    assert prod.one(SERVICE).inputs["networkConfiguration"]["securityGroups"] == [f"{task_sg.name}-id"]
    for rule in task_sg.inputs["ingress"]:
        assert rule.get("securityGroups") == [f"{alb_sg.name}-id"], f"{task_sg.name} ingress {rule}"
        assert not rule.get("cidrBlocks"), f"{task_sg.name} open to CIDRs {rule['cidrBlocks']}"
        assert (rule["fromPort"], rule["toPort"]) == (3000, 3000)


# --- edge ----------------------------------------------------------------------------------------

def test_alb_is_public_in_public_subnets(prod):
    alb = prod.one("aws:lb/loadBalancer:LoadBalancer")
    assert alb.inputs["internal"] is False and alb.inputs["loadBalancerType"] == "application", alb.name
    assert all("-public-" in s for s in alb.inputs["subnets"]), f"{alb.name} subnets {alb.inputs['subnets']}"
    assert alb.inputs["dropInvalidHeaderFields"] is True, alb.name


def test_target_group_checks_readiness_by_ip(prod):
    tg = prod.one("aws:lb/targetGroup:TargetGroup")
    assert tg.inputs["targetType"] == "ip", tg.name
    assert tg.inputs["healthCheck"]["path"] in ("/readyz", "/healthz"), tg.name
    assert tg.inputs["deregistrationDelay"] <= 30, f"{tg.name}: deregistration delay too long"


def test_without_certificate_http_forwards_and_there_is_no_https(prod):
    listeners = prod.of_type("aws:lb/listener:Listener")
    assert [(l.inputs["port"], l.inputs["defaultActions"][0]["type"]) for l in listeners] == [(80, "forward")]
    assert prod.outputs["url"].startswith("http://")


def test_with_certificate_http_redirects_to_tls_listener():
    cert = "arn:aws:acm:us-west-2:123456789012:certificate/abc"
    program = run_program({**stack_config(), "ml-api:certificateArn": cert})
    http = program.one("aws:lb/listener:Listener", "-http")
    https = program.one("aws:lb/listener:Listener", "-https")
    action = http.inputs["defaultActions"][0]
    assert action["type"] == "redirect" and action["redirect"]["protocol"] == "HTTPS", http.name
    assert action["redirect"]["statusCode"] == "HTTP_301", http.name
    assert https.inputs["protocol"] == "HTTPS" and https.inputs["certificateArn"] == cert, https.name
    assert "TLS13" in https.inputs["sslPolicy"], https.name
    assert https.inputs["defaultActions"][0]["type"] == "forward"
    assert program.outputs["url"].startswith("https://")
    alb_sg = program.one("aws:ec2/securityGroup:SecurityGroup", "alb-sg")
    assert sorted(r["fromPort"] for r in alb_sg.inputs["ingress"]) == [80, 443], alb_sg.name


def test_waf_rate_limits_and_uses_managed_rules_and_logs(prod):
    acl = prod.one("aws:wafv2/webAcl:WebAcl")
    assert acl.inputs["scope"] == "REGIONAL" and acl.inputs["defaultAction"] == {"allow": {}}, acl.name
    rules = acl.inputs["rules"]
    rate = [r for r in rules if "rateBasedStatement" in r["statement"]]
    assert len(rate) == 1 and rate[0]["action"] == {"block": {}}, f"{acl.name}: rate rule {rate}"
    assert rate[0]["statement"]["rateBasedStatement"]["aggregateKeyType"] == "IP"
    managed = {r["statement"]["managedRuleGroupStatement"]["name"]
               for r in rules if "managedRuleGroupStatement" in r["statement"]}
    assert {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"} <= managed, acl.name
    assert len({r["priority"] for r in rules}) == len(rules), f"{acl.name}: duplicate priorities"
    common = next(r for r in rules if r["name"] == "AWSManagedRulesCommonRuleSet")
    overrides = common["statement"]["managedRuleGroupStatement"]["ruleActionOverrides"]
    assert {"name": "SizeRestrictions_BODY", "actionToUse": {"count": {}}} in overrides, \
        f"{acl.name}: the 8 KB body rule would block /predict_batch"
    assoc = prod.one("aws:wafv2/webAclAssociation:WebAclAssociation")
    alb = prod.one("aws:lb/loadBalancer:LoadBalancer")
    assert assoc.inputs["resourceArn"].endswith(f"/{alb.inputs['name']}"), assoc.name
    logging = prod.one("aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration")
    [destination] = logging.inputs["logDestinationConfigs"]
    assert ":log-group:aws-waf-logs-" in destination, f"{logging.name} logs to {destination}"


# --- scaling -------------------------------------------------------------------------------------

def test_autoscaling_bounds_and_target_tracking(prod):
    target = prod.one("aws:appautoscaling/target:Target")
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (5, 20), target.name
    assert target.inputs["resourceId"] == "service/ml-api-prod/ml-api-prod", target.name
    policies = {}
    for p in prod.of_type(POLICY):
        cfg = p.inputs["targetTrackingScalingPolicyConfiguration"]
        assert p.inputs["policyType"] == "TargetTrackingScaling", p.name
        assert cfg["scaleOutCooldown"] > 0 and cfg["scaleInCooldown"] >= cfg["scaleOutCooldown"], \
            f"{p.name}: scale in must be at least as cautious as scale out"
        policies[cfg["predefinedMetricSpecification"]["predefinedMetricType"]] = cfg
    assert policies["ECSServiceAverageCPUUtilization"]["targetValue"] == 70
    assert policies["ECSServiceAverageMemoryUtilization"]["targetValue"] == 80
    label = policies["ALBRequestCountPerTarget"]["predefinedMetricSpecification"]["resourceLabel"]
    assert label == "app/ml-api-prod/50dc6c495c0c9188/targetgroup/ml-api-prod/73e2d6bc24d8a067", label


def test_scaling_and_task_size_follow_config_overrides():
    program = run_program({**stack_config(), "ml-api:minCapacity": "2", "ml-api:maxCapacity": "8",
                           "ml-api:cpuTarget": "55", "ml-api:taskCpu": "2048",
                           "ml-api:taskMemory": "4096", "ml-api:xgbWorkers": "2",
                           "ml-api:imageTag": "20260101.abc"})
    target = program.one("aws:appautoscaling/target:Target")
    assert (target.inputs["minCapacity"], target.inputs["maxCapacity"]) == (2, 8), target.name
    cpu = program.one(POLICY, "-cpu").inputs["targetTrackingScalingPolicyConfiguration"]
    assert cpu["targetValue"] == 55
    assert program.one(SERVICE).inputs["desiredCount"] == 2
    task = program.one(TASK_DEF)
    assert (task.inputs["cpu"], task.inputs["memory"]) == ("2048", "4096"), task.name
    c = container(program)
    assert c["image"].endswith("/ml-api-prod:20260101.abc"), c["image"]
    assert {e["name"]: e["value"] for e in c["environment"]}["XGB_WORKERS"] == "2"
    below_min = program.one(ALARM, "running-below-min")
    assert below_min.inputs["threshold"] == 2, below_min.name
    assert program.outputs["minCapacity"] == 2 and program.outputs["maxCapacity"] == 8


# --- observability -------------------------------------------------------------------------------

def test_log_groups_have_retention(prod):
    groups = prod.of_type("aws:cloudwatch/logGroup:LogGroup")
    assert {g.inputs["name"] for g in groups} == {"/ecs/ml-api-prod", "aws-waf-logs-ml-api-prod"}
    for g in groups:
        assert 0 < g.inputs.get("retentionInDays", 0) <= 365, f"{g.name} keeps logs forever"


def test_alarms_cover_errors_latency_health_cpu_and_task_count(prod):
    alarms = {a.inputs["metricName"]: a for a in prod.of_type(ALARM)}
    assert {"HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count", "TargetResponseTime",
            "UnHealthyHostCount", "CPUUtilization", "RunningTaskCount"} <= set(alarms)
    assert alarms["TargetResponseTime"].inputs["extendedStatistic"] == "p99"
    running = alarms["RunningTaskCount"]
    assert running.inputs["comparisonOperator"] == "LessThanThreshold" and running.inputs["threshold"] == 5
    assert running.inputs["treatMissingData"] == "breaching", f"{running.name}: no data means no tasks"
    topic = prod.one("aws:sns/topic:Topic")
    for a in alarms.values():
        assert a.inputs["alarmActions"] == [f"arn:aws:sns:us-west-2:123456789012:topic/{topic.inputs['name']}"], \
            f"{a.name} notifies nobody"
        assert a.inputs["dimensions"], f"{a.name} watches no resource"


def test_dashboard_shows_the_service(prod):
    board = prod.one("aws:cloudwatch/dashboard:Dashboard")
    body = json.loads(board.inputs["dashboardBody"])
    metrics = {m[1] for w in body["widgets"] for m in w["properties"]["metrics"]}
    assert {"RequestCount", "TargetResponseTime", "CPUUtilization", "MemoryUtilization",
            "RunningTaskCount", "HTTPCode_Target_5XX_Count"} <= metrics, board.name
    assert prod.outputs["dashboardUrl"].endswith("#dashboards:name=ml-api-prod")


# --- IAM -----------------------------------------------------------------------------------------

def test_iam_is_least_privilege(prod):
    for role in prod.of_type("aws:iam/role:Role"):
        trust = json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]
        assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}, role.name
        assert trust["Condition"]["StringEquals"]["aws:SourceAccount"] == "123456789012", role.name
    for policy in prod.of_type("aws:iam/rolePolicy:RolePolicy"):
        for st in json.loads(policy.inputs["policy"])["Statement"]:
            actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
            assert not any("*" in a for a in actions), f"{policy.name}: wildcard action in {st}"
            if st["Resource"] == "*":
                assert actions == ["ecr:GetAuthorizationToken"], f"{policy.name}: {actions} on *"
    assert prod.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") == [], \
        "managed policies (AmazonECSTaskExecutionRolePolicy) grant more than needed"
    task_role = prod.one("aws:iam/role:Role", "-task")
    assert not [p for p in prod.of_type("aws:iam/rolePolicy:RolePolicy")
                if p.inputs["role"] == f"{task_role.name}-id"], f"{task_role.name} needs no permissions"
    execution = prod.one("aws:iam/rolePolicy:RolePolicy", "-execution")
    resources = {st["Sid"]: st["Resource"] for st in json.loads(execution.inputs["policy"])["Statement"]}
    assert resources["EcrPull"].endswith(":repository/ml-api-prod"), execution.name
    assert resources["Logs"].startswith("arn:aws:logs:us-west-2:123456789012:log-group:/ecs/ml-api-prod")


def test_api_key_comes_from_secrets_manager():
    program = run_program({**stack_config(), "ml-api:apiKey": "s3cret"}, secret_keys=["ml-api:apiKey"])
    secret = program.one("aws:secretsmanager/secret:Secret")
    c = container(program)
    assert c["secrets"] == [{"name": "XGB_API_KEY", "valueFrom": f"arn:aws:secretsmanager:us-west-2:"
                                                                 f"123456789012:secret/{secret.name}"}]
    assert "s3cret" not in json.dumps(c), "the key itself must not be in the task definition"
    execution = program.one("aws:iam/rolePolicy:RolePolicy", "-execution")
    statements = json.loads(execution.inputs["policy"])["Statement"]
    read = [s for s in statements if s["Action"] == ["secretsmanager:GetSecretValue"]]
    assert read and read[0]["Resource"] == c["secrets"][0]["valueFrom"], execution.name


# --- outputs -------------------------------------------------------------------------------------

def test_stack_outputs(prod):
    out = prod.outputs
    assert out["url"] == "http://ml-api-prod-1234567890.us-west-2.elb.amazonaws.com"
    assert out["ecrRepositoryUrl"] == "123456789012.dkr.ecr.us-west-2.amazonaws.com/ml-api-prod"
    assert (out["clusterName"], out["serviceName"]) == ("ml-api-prod", "ml-api-prod")
    assert out["dashboardUrl"].startswith("https://us-west-2.console.aws.amazon.com/cloudwatch/")
    assert out["logGroupName"] == "/ecs/ml-api-prod"
    assert out["scalingResourceId"] == "service/ml-api-prod/ml-api-prod"


def test_every_taggable_resource_is_tagged(prod):
    untagged = [r.name for r in prod.resources
                if r.type.startswith("aws:") and "tags" in r.inputs
                and r.inputs["tags"].get("Project") != "ml-api"]
    assert untagged == []
    for type_ in (TASK_DEF, SERVICE, "aws:ec2/vpc:Vpc", "aws:lb/loadBalancer:LoadBalancer",
                  "aws:ecr/repository:Repository", "aws:wafv2/webAcl:WebAcl"):
        for r in prod.of_type(type_):
            assert r.inputs.get("tags", {}).get("Environment") == "prod", f"{r.name} is untagged"
