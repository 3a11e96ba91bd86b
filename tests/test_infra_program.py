"""Policy for the Pulumi program, checked on what it declares under `pulumi.runtime.set_mocks`.

The program runs once with the committed prod stack config (`Pulumi.prod.yaml`); each test reads
the recorded resource inputs (camelCase, as the engine receives them). Messages name the resource.
"""

from __future__ import annotations

import ipaddress
import json
import shlex
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
    """The service's container (the first: ops and the ALB name it; the ADOT sidecar follows)."""
    task = program.one(TASK_DEF)
    definitions = json.loads(task.inputs["containerDefinitions"])
    assert [d["name"] for d in definitions] == ["api", "adot-collector"], f"{task.name}: {definitions}"
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
        "ml-api:network:Network", "ml-api:registry:Registry", "ml-api:image:ServiceImage",
        "ml-api:iam:TaskRoles", "ml-api:service:Service", "ml-api:edge:Edge", "ml-api:edge:AccessLogs",
        "ml-api:scaling:Scaling", "ml-api:observability:LogGroups", "ml-api:observability:Monitoring",
        "ml-api:models:ModelBucket", "ml-api:observability:ManagedPrometheus"}


# --- image: `pulumi up` on a fresh stack builds and pushes it -----------------------------------

def test_pulumi_up_on_a_fresh_stack_builds_and_pushes_the_image(prod):
    from ml_api_infra.image import build_fingerprint
    from ops.cli import parser

    assert "ml-api:imageTag" not in stack_config("prod"), "a committed tag names an image nobody pushed"
    build = prod.one("command:local:Command")
    repo_url = prod.outputs["ecrRepositoryUrl"]
    argv = shlex.split(build.inputs["create"])
    assert argv[:3] == [".venv/bin/python", "-m", "ops"] and build.inputs["dir"] == "..", build.inputs
    args = parser().parse_args(argv[3:])  # a command ops understands, for this stack and repository
    assert (args.verb, args.stack, args.region, args.repository_url) == ("push", "prod", "us-west-2", repo_url)
    assert build.inputs["triggers"] == [build_fingerprint()], "a changed build input must rebuild"
    # The task runs exactly the image the command pushed (its last line), not a configured tag.
    image = container(prod)["image"]
    assert image == prod.outputs["image"] == f"{repo_url}:{build_fingerprint()[:16]}", image


def test_build_fingerprint_follows_the_sources_and_the_model(tmp_path):
    from ml_api_infra.image import build_fingerprint

    for name in ("service.py", "bentofile.yaml", "serving/app.py", "requirements-serve.lock"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    home = tmp_path / "home"
    before = build_fingerprint(tmp_path, home)
    (tmp_path / "serving/app.py").write_text("changed")
    after_source = build_fingerprint(tmp_path, home)
    (home / "models/xgb_classifier").mkdir(parents=True)
    (home / "models/xgb_classifier/latest").write_text("newversion")
    after_model = build_fingerprint(tmp_path, home)
    assert len({before, after_source, after_model}) == 3
    assert build_fingerprint(tmp_path, home) == after_model, "the same inputs must not rebuild"


def test_a_pinned_image_tag_is_used_without_building():
    program = run_program({**stack_config(), "ml-api:imageTag": "v7"})
    assert program.of_type("command:local:Command") == []
    assert container(program)["image"] == "123456789012.dkr.ecr.us-west-2.amazonaws.com/ml-api-prod:v7"


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


def test_pulumi_up_waits_until_the_service_is_steady(prod):
    svc = prod.one(SERVICE)
    assert svc.inputs["waitForSteadyState"] is True, \
        f"{svc.name}: without it `pulumi up` succeeds while tasks fail to pull or start"


def test_candidate_model_settings_reach_the_task():
    program = run_program({**stack_config(), "ml-api:candidateTag": "xgb_classifier:abc",
                           "ml-api:candidateMode": "shadow", "ml-api:candidatePercent": "10"})
    env = {e["name"]: e["value"] for e in container(program)["environment"]}
    assert (env["XGB_CANDIDATE_TAG"], env["XGB_CANDIDATE_MODE"], env["XGB_CANDIDATE_PERCENT"]) == \
        ("xgb_classifier:abc", "shadow", "10")
    assert "XGB_SHADOW_MIN_AGREEMENT" not in env, "unset: the service's default"
    canary = run_program({**stack_config(), "ml-api:candidateTag": "xgb_classifier:abc", "ml-api:candidateMode": "canary",
                          "ml-api:shadowMinAgreement": "0.7"})
    env = {e["name"]: e["value"] for e in container(canary)["environment"]}
    assert (env["XGB_CANDIDATE_MODE"], env["XGB_CANDIDATE_PERCENT"], env["XGB_SHADOW_MIN_AGREEMENT"]) == ("canary", "10", "0.7")
    without = {e["name"] for e in container(run_program(stack_config()))["environment"]}
    assert not {n for n in without if "CANDIDATE" in n or "SHADOW" in n}, "no candidate: nothing of it in the task"


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
    # ECS drains the target (this long) before it sends SIGTERM: a request may run the full timeout.
    assert tg.inputs["deregistrationDelay"] >= 30 + 5, f"{tg.name}: shorter than the 30 s request timeout"


def test_without_certificate_http_forwards_and_there_is_no_https(prod):
    listeners = prod.of_type("aws:lb/listener:Listener")
    assert [(l.inputs["port"], l.inputs["defaultActions"][0]["type"]) for l in listeners] == [(80, "forward")]
    assert prod.outputs["url"].startswith("http://")


def test_with_certificate_http_redirects_to_tls_listener():
    cert = "arn:aws:acm:us-west-2:123456789012:certificate/abc"
    program = run_program({**stack_config(), "ml-api:certificateArn": cert,
                           "ml-api:domainName": "api.example.com"})
    http = program.one("aws:lb/listener:Listener", "-http")
    https = program.one("aws:lb/listener:Listener", "-https")
    action = http.inputs["defaultActions"][0]
    assert action["type"] == "redirect" and action["redirect"]["protocol"] == "HTTPS", http.name
    assert action["redirect"]["statusCode"] == "HTTP_301", http.name
    assert https.inputs["protocol"] == "HTTPS" and https.inputs["certificateArn"] == cert, https.name
    assert "TLS13" in https.inputs["sslPolicy"], https.name
    assert https.inputs["defaultActions"][0]["type"] == "forward"
    assert program.outputs["url"] == "https://api.example.com", "no certificate covers the ALB's DNS name"
    alb_sg = program.one("aws:ec2/securityGroup:SecurityGroup", "alb-sg")
    assert sorted(r["fromPort"] for r in alb_sg.inputs["ingress"]) == [80, 443], alb_sg.name
    assert program.of_type("aws:acm/certificate:Certificate") == [], "an issued certificate is reused"


def test_domain_gets_a_dns_validated_certificate_an_alias_and_the_url():
    program = run_program({**stack_config(), "ml-api:domainName": "api.example.com",
                           "ml-api:hostedZoneId": "Z0123456789ABCDEFGHIJ"})
    cert = program.one("aws:acm/certificate:Certificate")
    assert (cert.inputs["domainName"], cert.inputs["validationMethod"]) == ("api.example.com", "DNS")
    records = {r.inputs["type"]: r for r in program.of_type("aws:route53/record:Record")}
    validation_record = records["CNAME"]
    assert validation_record.inputs["zoneId"] == "Z0123456789ABCDEFGHIJ"
    # The record ACM asks for (the certificate's domain validation option), not one we made up.
    assert validation_record.inputs["name"].startswith("_") and \
        validation_record.inputs["name"].endswith(".api.example.com.")
    assert validation_record.inputs["records"][0].endswith(".acm-validations.aws.")
    validation = program.one("aws:acm/certificateValidation:CertificateValidation")
    assert validation.inputs["validationRecordFqdns"] == [validation_record.inputs["name"].rstrip(".")]
    https = program.one("aws:lb/listener:Listener", "-https")
    assert https.inputs["certificateArn"] == validation.inputs["certificateArn"] == cert_arn(cert), \
        "the listener must wait for the validated certificate"
    http = program.one("aws:lb/listener:Listener", "-http")
    assert http.inputs["defaultActions"][0]["redirect"]["protocol"] == "HTTPS"
    alias = records["A"]
    alb = program.one("aws:lb/loadBalancer:LoadBalancer")
    assert alias.inputs["name"] == "api.example.com" and alias.inputs["zoneId"] == "Z0123456789ABCDEFGHIJ"
    assert alias.inputs["aliases"] == [{"name": f"{alb.inputs['name']}-1234567890.us-west-2.elb.amazonaws.com",
                                        "zoneId": "Z1H1FL5HABSF5", "evaluateTargetHealth": True}]
    assert program.outputs["url"] == "https://api.example.com"


def cert_arn(cert) -> str:
    return f"arn:aws:acm:us-west-2:123456789012:certificate/{cert.name}"


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
    assert rate[0]["statement"]["rateBasedStatement"]["limit"] == 100_000, "the documented default"
    assert "scopeDownStatement" not in rate[0]["statement"]["rateBasedStatement"]
    assert prod.of_type("aws:wafv2/ipSet:IpSet") == []


def test_waf_rate_limit_is_config_and_load_test_sources_skip_it():
    program = run_program({**stack_config(), "ml-api:wafRateLimit": "50000",
                           "ml-api:loadTestCidrs": '["203.0.113.7/32", "198.51.100.0/24"]'})
    ip_set = program.one("aws:wafv2/ipSet:IpSet")
    assert ip_set.inputs["addresses"] == ["203.0.113.7/32", "198.51.100.0/24"]
    assert (ip_set.inputs["scope"], ip_set.inputs["ipAddressVersion"]) == ("REGIONAL", "IPV4")
    rules = program.one("aws:wafv2/webAcl:WebAcl").inputs["rules"]
    [rate] = [r["statement"]["rateBasedStatement"] for r in rules if "rateBasedStatement" in r["statement"]]
    assert rate["limit"] == 50000
    # Counted (and blocked) only when NOT from the allow-list.
    assert rate["scopeDownStatement"] == {"notStatement": {"statement": {"ipSetReferenceStatement": {
        "arn": f"arn:aws:wafv2:us-west-2:123456789012:ipset/{ip_set.inputs['name']}"}}}}
    # The managed rules still inspect load-test traffic.
    assert all("scopeDownStatement" not in json.dumps(r) for r in rules if "managedRuleGroupStatement" in r["statement"])


def test_alb_access_logs_go_to_a_private_expiring_bucket(prod):
    alb = prod.one("aws:lb/loadBalancer:LoadBalancer")
    bucket = prod.one("aws:s3/bucket:Bucket", "-alb-logs")
    logs = alb.inputs["accessLogs"]
    assert logs["enabled"] is True and logs["prefix"] == "alb", alb.name
    assert logs["bucket"].startswith(bucket.inputs["bucketPrefix"]), (logs, bucket.inputs)
    lifecycle = prod.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration")
    [rule] = lifecycle.inputs["rules"]
    assert rule["status"] == "Enabled" and rule["expiration"]["days"] == 30, lifecycle.name
    for block in prod.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"):  # logs and models
        assert all(block.inputs[k] for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls",
                                             "restrictPublicBuckets")), block.name
    sse = prod.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", "-alb-logs")
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256", \
        "ALB log delivery supports SSE-S3 only"
    [statement] = json.loads(prod.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])["Statement"]
    # us-west-2's Elastic Load Balancing account writes the logs, under this account's prefix only.
    assert statement["Principal"] == {"AWS": "arn:aws:iam::797873946194:root"}
    assert statement["Action"] == "s3:PutObject"
    assert statement["Resource"] == f"arn:aws:s3:::{logs['bucket']}/alb/AWSLogs/123456789012/*"


def test_alb_deletion_protection_is_on_for_prod_only(prod):
    assert prod.one("aws:lb/loadBalancer:LoadBalancer").inputs["enableDeletionProtection"] is True
    staging = run_program({**stack_config(), "ml-api:environment": "staging"})
    assert staging.one("aws:lb/loadBalancer:LoadBalancer").inputs["enableDeletionProtection"] is False
    off = run_program({**stack_config(), "ml-api:deletionProtection": "false"})
    assert off.one("aws:lb/loadBalancer:LoadBalancer").inputs["enableDeletionProtection"] is False


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
    assert running.inputs["treatMissingData"] == "notBreaching", \
        f"{running.name}: no data during the first bring-up must not page"
    topic = prod.one("aws:sns/topic:Topic", "-alarms")
    for a in alarms.values():
        assert a.inputs["alarmActions"] == [f"arn:aws:sns:us-west-2:123456789012:topic/{topic.inputs['name']}"], \
            f"{a.name} notifies nobody"
        assert a.inputs["dimensions"], f"{a.name} watches no resource"


def test_ecs_deployment_failures_notify_the_alarm_topic(prod):
    rule = prod.one("aws:cloudwatch/eventRule:EventRule")
    pattern = json.loads(rule.inputs["eventPattern"])
    assert pattern == {"source": ["aws.ecs"], "detail-type": ["ECS Deployment State Change"],
                       "resources": ["arn:aws:ecs:us-west-2:123456789012:service/ml-api-prod/ml-api-prod"],
                       "detail": {"eventName": ["SERVICE_DEPLOYMENT_FAILED"]}}, rule.name
    topic = prod.one("aws:sns/topic:Topic", "-alarms")
    topic_arn = f"arn:aws:sns:us-west-2:123456789012:topic/{topic.inputs['name']}"
    target = prod.one("aws:cloudwatch/eventTarget:EventTarget")
    assert (target.inputs["rule"], target.inputs["arn"]) == (rule.inputs["name"], topic_arn)
    statements = json.loads(prod.one("aws:sns/topicPolicy:TopicPolicy", "-alarms").inputs["policy"])["Statement"]
    events = [s for s in statements if s["Principal"] == {"Service": "events.amazonaws.com"}]
    assert events and events[0]["Action"] == "sns:Publish" and events[0]["Resource"] == topic_arn
    assert events[0]["Condition"]["ArnEquals"]["aws:SourceArn"].endswith(f"/{rule.inputs['name']}")
    owner = [s for s in statements if s["Principal"] == {"AWS": "*"}]
    assert owner and owner[0]["Condition"] == {"StringEquals": {"AWS:SourceOwner": "123456789012"}}, \
        "the alarms publish under SNS's default (owner) policy, which this policy replaces"


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
            if st["Resource"] == "*":  # the two APIs AWS grants on "*" only
                assert actions in (["ecr:GetAuthorizationToken"], ["xray:PutTraceSegments", "xray:PutTelemetryRecords"]), \
                    f"{policy.name}: {actions} on *"
    assert prod.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") == [], \
        "managed policies (AmazonECSTaskExecutionRolePolicy) grant more than needed"
    # The task role's only policy is the sidecar's (tests/test_infra_observability.py checks its scope).
    task_role = prod.one("aws:iam/role:Role", "-task")
    task_policies = {p.name: p for p in prod.of_type("aws:iam/rolePolicy:RolePolicy")
                     if p.inputs["role"] in (f"{task_role.name}-id", task_role.inputs["name"])}
    assert sorted(task_policies) == ["ml-api-prod-task-models", "ml-api-prod-task-telemetry"], task_role.name
    statements = json.loads(task_policies["ml-api-prod-task-models"].inputs["policy"])["Statement"]
    assert [(st["Action"], st["Resource"]) for st in statements] == [
        (["s3:GetObject"], "arn:aws:s3:::ml-api-prod-models-123456789012/models/xgb_classifier/*")], \
        f"{task_role.name} reads published models only: {statements}"
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


# --- capture (serving/capture.py) ----------------------------------------------------------------

def test_capture_is_off_by_default_with_no_bucket_and_no_task_permission(prod):
    assert not [r for r in prod.of_type("aws:s3/bucket:Bucket") if r.name.endswith("-capture")], "no capture bucket"
    names = {e["name"] for e in container(prod)["environment"]}
    assert not names & {"XGB_CAPTURE", "XGB_CAPTURE_URI"}, names


def test_capture_gets_a_private_encrypted_expiring_bucket_and_put_only_on_its_prefix():
    program = run_program({**stack_config(), "ml-api:capturePercent": "5", "ml-api:captureRetentionDays": "45"})
    bucket = program.one("aws:s3/bucket:Bucket", "-capture")
    assert bucket.inputs["bucketPrefix"].startswith("ml-api-prod-capture-"), bucket.inputs
    block = program.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "-capture")
    assert all(block.inputs[k] for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")), block.name
    sse = program.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", "-capture")
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256", sse.name
    [rule] = program.one("aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "-capture").inputs["rules"]
    assert rule["status"] == "Enabled" and rule["expiration"]["days"] == 45 and rule["filter"]["prefix"] == "capture/", rule
    assert rule["abortIncompleteMultipartUpload"]["daysAfterInitiation"] == 1, rule
    task_role = program.one("aws:iam/role:Role", "-task")
    policy = program.one("aws:iam/rolePolicy:RolePolicy", "-task-capture")
    assert policy.inputs["role"] == f"{task_role.name}-id", policy.name
    [statement] = json.loads(policy.inputs["policy"])["Statement"]
    uri = program.outputs["captureUri"]
    bucket_arn = f"arn:aws:s3:::{uri.removeprefix('s3://').split('/')[0]}"
    assert statement["Action"] == ["s3:PutObject"] and statement["Resource"] == f"{bucket_arn}/capture/*", \
        f"{policy.name}: the task role may only put objects under the capture prefix: {statement}"
    environment = {e["name"]: e["value"] for e in container(program)["environment"]}
    assert uri.startswith("s3://ml-api-prod-capture-") and uri.endswith("/capture"), uri
    assert (environment["XGB_CAPTURE"], environment["XGB_CAPTURE_URI"]) == ("5", uri), environment


def test_capture_config_is_checked():
    from ml_api_infra.settings import SettingsError, StackSettings

    with pytest.raises(SettingsError, match="ml-api:capturePercent"):
        StackSettings(capture_percent=101).validate()
    with pytest.raises(SettingsError, match="ml-api:captureRetentionDays"):
        StackSettings(capture_retention_days=0).validate()
