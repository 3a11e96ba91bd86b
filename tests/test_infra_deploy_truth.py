"""Issue 24's infrastructure fixes, under `pulumi.runtime.set_mocks`: what the program declares for
rollbacks, keep-alive, WAF, logs, Fargate sizes, draining, the image push's credentials, access logs,
alarms and the model bucket. Each assertion names the resource; docs/deployment.md names the AWS or
Pulumi documentation each follows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "infra_pulumi"))

from ml_api_infra.edge import ELB_ACCOUNT_BY_REGION, LOG_DELIVERY_PRINCIPAL  # noqa: E402
from ml_api_infra.mocks import Program, run_program, stack_config  # noqa: E402
from ml_api_infra.settings import FARGATE_MEMORY_BY_CPU, SettingsError, StackSettings  # noqa: E402

TASK = "aws:ecs/taskDefinition:TaskDefinition"
ACL = "aws:wafv2/webAcl:WebAcl"


@pytest.fixture(scope="module")
def prod() -> Program:
    return run_program(stack_config())


def container(program: Program) -> dict:
    """The service's container (the first; the ADOT collector sidecar follows)."""
    definitions = json.loads(program.one(TASK).inputs["containerDefinitions"])
    assert definitions[0]["name"] == "api", [d["name"] for d in definitions]
    return definitions[0]


# 1. the stack says which revision it registered
def test_the_registered_task_definition_is_a_stack_output(prod):
    task = prod.one(TASK)
    assert prod.outputs["taskDefinitionArn"] == f"arn:aws:ecs:us-west-2:123456789012:task-definition/{task.inputs['family']}:1", \
        f"{task.name}: {prod.outputs['taskDefinitionArn']}"


# 2. replaced revisions stay ACTIVE for `ops rollback`
def test_replaced_task_definition_revisions_are_not_deregistered(prod):
    task = prod.one(TASK)
    assert task.inputs["skipDestroy"] is True, f"{task.name}: a replacement would deregister the previous revision"


# 3. keep-alive outlasts the ALB's idle timeout, derived in one place
@pytest.mark.parametrize("idle", [60, 120])
def test_the_tasks_keep_alive_outlasts_the_albs_idle_timeout(idle):
    program = run_program({**stack_config(), "ml-api:albIdleTimeout": str(idle)})
    alb = program.one("aws:lb/loadBalancer:LoadBalancer")
    command = container(program)["command"]
    assert command[:2] == ["serve", "--timeout-keep-alive"], command
    assert alb.inputs["idleTimeout"] == idle, alb.name
    assert int(command[2]) > alb.inputs["idleTimeout"], f"{alb.name}: keep-alive {command[2]} <= idle {idle}"


# 4. WAF: a valid key is not an anonymous client; limits from config
def test_the_per_ip_rate_rule_skips_requests_with_the_valid_key_and_keys_are_limited_per_key():
    program = run_program({**stack_config(), "ml-api:apiKey": "s3cret-key", "ml-api:wafKeyRateLimit": "600000"},
                          secret_keys=["ml-api:apiKey"])
    secret = program.one(ACL).inputs["rules"]
    # The key is in the rules: Pulumi keeps them secret (encrypted in the state), as the key itself.
    assert secret.get("4dabf18193072939515e22adb298388d") == "1b47061264138c4ac30d75fd1eb44270", "rules not secret"
    rules = {r["name"]: r for r in secret["value"]}
    per_ip = rules["rate-limit-per-ip"]["statement"]["rateBasedStatement"]
    assert per_ip["aggregateKeyType"] == "IP" and per_ip["limit"] == 100_000
    match = per_ip["scopeDownStatement"]["notStatement"]["statement"]["byteMatchStatement"]
    assert match["fieldToMatch"] == {"singleHeader": {"name": "x-api-key"}}
    assert (match["searchString"], match["positionalConstraint"]) == ("s3cret-key", "EXACTLY")
    per_key = rules["rate-limit-per-api-key"]["statement"]["rateBasedStatement"]
    assert per_key["aggregateKeyType"] == "CUSTOM_KEYS" and per_key["limit"] == 600_000
    assert per_key["customKeys"][0]["header"]["name"] == "x-api-key"
    priorities = [r["priority"] for r in rules.values()]
    assert len(set(priorities)) == len(priorities), priorities


def test_without_an_api_key_there_is_no_key_rule(prod):
    names = [r["name"] for r in prod.one(ACL).inputs["rules"]]
    assert "rate-limit-per-api-key" not in names, names


# 5. WAF logs: only BLOCK/COUNT, explicit resource policy
def test_waf_logs_only_blocked_and_counted_requests_under_an_explicit_policy(prod):
    logging = prod.one("aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration")
    flt = logging.inputs["loggingFilter"]
    assert flt["defaultBehavior"] == "DROP", logging.name
    [keep] = flt["filters"]
    assert keep["behavior"] == "KEEP" and {c["actionCondition"]["action"] for c in keep["conditions"]} == {"BLOCK", "COUNT"}
    policy = prod.one("aws:cloudwatch/logResourcePolicy:LogResourcePolicy")
    [statement] = json.loads(policy.inputs["policyDocument"])["Statement"]
    assert statement["Principal"] == {"Service": "delivery.logs.amazonaws.com"}, policy.name
    assert statement["Resource"].startswith("arn:aws:logs:us-west-2:123456789012:log-group:aws-waf-logs-"), policy.name
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == "123456789012"
    all_requests = run_program({**stack_config(), "ml-api:wafLog": "all"})
    assert "loggingFilter" not in all_requests.one("aws:wafv2/webAclLoggingConfiguration:WebAclLoggingConfiguration").inputs


# 7. Fargate sizes: AWS's table
@pytest.mark.parametrize("cpu,memory", [(256, 512), (256, 2048), (512, 4096), (2048, 16384), (4096, 30720),
                                        (8192, 16384), (8192, 61440), (16384, 32768), (16384, 122880)])
def test_valid_fargate_sizes_are_accepted(cpu, memory):
    StackSettings(task_cpu=cpu, task_memory=memory).validate()


@pytest.mark.parametrize("cpu,memory", [(256, 1536), (256, 3072), (512, 512), (1024, 9216), (4096, 31744),
                                        (8192, 17408), (8192, 65536), (16384, 36864), (16384, 131072), (3072, 8192)])
def test_invalid_fargate_sizes_name_the_allowed_ones(cpu, memory):
    key = "taskCpu" if cpu not in FARGATE_MEMORY_BY_CPU else "taskMemory"
    with pytest.raises(SettingsError, match=f"ml-api:{key}"):
        StackSettings(task_cpu=cpu, task_memory=memory).validate()


# 8. draining outlasts the request timeout
def test_deregistration_delay_outlasts_the_request_timeout(prod):
    tg = prod.one("aws:lb/targetGroup:TargetGroup")
    timeout = 30  # serving/settings.py request_timeout_s
    from serving.settings import Settings

    assert Settings.model_fields["request_timeout_s"].default == timeout
    assert tg.inputs["deregistrationDelay"] >= timeout + 5, tg.name


# 9. the image push uses the stack's aws:profile
def test_the_image_push_runs_with_the_stacks_aws_profile():
    program = run_program({**stack_config(), "aws:profile": "deployer"})
    build = program.one("command:local:Command")
    assert build.inputs["environment"] == {"AWS_PROFILE": "deployer"}, build.name
    without = run_program(stack_config()).one("command:local:Command")
    assert not without.inputs.get("environment"), f"{without.name}: no aws:profile, no AWS_PROFILE override"


# 10. access logs: on by default, the right writer per region
@pytest.mark.parametrize("region,principal", [("us-west-2", {"AWS": "arn:aws:iam::797873946194:root"}),
                                              ("ap-southeast-4", {"Service": LOG_DELIVERY_PRINCIPAL}),
                                              ("eu-central-2", {"Service": LOG_DELIVERY_PRINCIPAL})])
def test_access_log_bucket_policy_names_the_regions_log_writer(region, principal):
    program = run_program({**stack_config(), "aws:region": region})
    assert program.one("aws:lb/loadBalancer:LoadBalancer").inputs["accessLogs"]["enabled"] is True
    [statement] = json.loads(program.one("aws:s3/bucketPolicy:BucketPolicy").inputs["policy"])["Statement"]
    assert statement["Principal"] == principal, (region, statement)
    assert "ap-southeast-4" not in ELB_ACCOUNT_BY_REGION  # opened after August 2022


def test_access_logs_can_be_turned_off():
    program = run_program({**stack_config(), "ml-api:albAccessLogs": "false"})
    assert "accessLogs" not in program.one("aws:lb/loadBalancer:LoadBalancer").inputs
    assert program.of_type("aws:s3/bucketPolicy:BucketPolicy") == []


# 11. alarms: the first bring-up does not page
def test_the_running_below_min_alarm_does_not_fire_on_missing_data(prod):
    alarm = next(a for a in prod.of_type("aws:cloudwatch/metricAlarm:MetricAlarm") if a.name.endswith("running-below-min"))
    assert alarm.inputs["treatMissingData"] == "notBreaching", alarm.name


def test_the_cost_tables_alarm_count_includes_target_trackings_alarms(prod):
    ours = len(prod.of_type("aws:cloudwatch/metricAlarm:MetricAlarm"))
    policies = len(prod.of_type("aws:appautoscaling/policy:Policy"))
    total = ours + 2 * policies  # target tracking creates a high and a low alarm per policy
    doc = (Path(__file__).resolve().parent.parent / "docs" / "deployment.md").read_text()
    assert f"{total} alarms" in doc, f"docs/deployment.md's cost table should count {total} alarms ({ours} + 2 x {policies})"


# model source: the task reads published models only, and serves the configured URIs
def test_the_task_role_reads_only_the_published_model_prefix(prod):
    role = prod.one("aws:iam/role:Role", "-task")
    [policy] = [p for p in prod.of_type("aws:iam/rolePolicy:RolePolicy") if p.inputs["role"] == f"{role.name}-id"]
    [statement] = json.loads(policy.inputs["policy"])["Statement"]
    bucket = prod.outputs["modelBucket"]
    assert statement == {"Sid": "ReadPublishedModels", "Effect": "Allow", "Action": ["s3:GetObject"],
                         "Resource": f"arn:aws:s3:::{bucket}/models/xgb_classifier/*"}, policy.name
    models = prod.one("aws:s3/bucket:Bucket", "-models")
    assert models.inputs["bucket"] == bucket == "ml-api-prod-models-123456789012"


def test_model_uris_reach_the_task_environment():
    uri = "s3://ml-api-prod-models-123456789012/models/xgb_classifier/abc123"
    candidate = "s3://ml-api-prod-models-123456789012/models/xgb_classifier/def456"
    program = run_program({**stack_config(), "ml-api:modelUri": uri, "ml-api:candidateUri": candidate,
                           "ml-api:candidateMode": "canary", "ml-api:candidatePercent": "5"})
    environment = {e["name"]: e["value"] for e in container(program)["environment"]}
    assert environment["MODEL_URI"] == uri and environment["CANDIDATE_MODEL_URI"] == candidate
    assert (environment["XGB_CANDIDATE_MODE"], environment["XGB_CANDIDATE_PERCENT"]) == ("canary", "5")
    with pytest.raises(SettingsError, match="ml-api:modelUri"):
        StackSettings(model_uri="s3://bucket/models/other/abc").validate()
