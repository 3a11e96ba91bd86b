"""The ops CLI's edges: credentials missing, stack config, the real subprocess runner, and that
ops finds resources under the names the Pulumi program gives them."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.aws import Aws
from ops.errors import OpsError
from ops.runner import Runner
from ops.stack import CONTAINER_NAME, load_stack, urn_selected

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                "AWS_DEFAULT_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_missing_credentials_are_reported_plainly(no_credentials):
    with pytest.raises(OpsError, match="no AWS credentials: set AWS_PROFILE"):
        Aws("us-west-2").check_credentials()
    proc = subprocess.run([sys.executable, "-m", "ops", "status"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: no AWS credentials: set AWS_PROFILE (after `aws sso login`) "
                                   "or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")


def test_missing_stack_config_names_the_file():
    proc = subprocess.run([sys.executable, "-m", "ops", "--stack", "staging", "status"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no stack config" in proc.stderr and "Pulumi.staging.yaml" in proc.stderr
    assert "pulumi stack init staging" in proc.stderr


def test_stack_names_come_from_the_stack_config(tmp_path):
    (tmp_path / "Pulumi.dev.yaml").write_text(
        "config:\n  aws:region: eu-central-1\n  ml-api:environment: dev\n")
    stack = load_stack("dev", tmp_path)
    assert (stack.region, stack.cluster, stack.service, stack.repository, stack.log_group) == \
        ("eu-central-1", "ml-api-dev", "ml-api-dev", "ml-api-dev", "/ecs/ml-api-dev")
    assert stack.registry_urns == "urn:pulumi:dev::ml-api::ml-api:registry:Registry**"
    assert (stack.domain_name, stack.image_tag) == ("", "")


def test_region_is_the_stacks_else_aws_region(tmp_path, monkeypatch):
    """Without `aws:region` in the stack, Pulumi's AWS provider deploys to AWS_REGION: ops looks there."""
    (tmp_path / "Pulumi.dev.yaml").write_text("config:\n  ml-api:environment: dev\n")
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    assert load_stack("dev", tmp_path).region == "ap-southeast-2"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-north-1")
    assert load_stack("dev", tmp_path).region == "eu-north-1"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert load_stack("dev", tmp_path).region == "us-west-2"
    (tmp_path / "Pulumi.dev.yaml").write_text("config:\n  aws:region: sa-east-1\n  ml-api:domainName: api.example.com\n")
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    stack = load_stack("dev", tmp_path)
    assert (stack.region, stack.domain_name) == ("sa-east-1", "api.example.com"), "the stack's own region wins"


def run_ops(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ops", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


def test_an_unknown_profile_is_one_line_naming_the_fix(no_credentials, tmp_path):
    (tmp_path / "config").write_text("[profile other]\nregion = us-west-2\n")
    proc = run_ops("--profile", "nope", "status", env={"AWS_CONFIG_FILE": str(tmp_path / "config")})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error: AWS profile 'nope' is not in ")
    assert "aws configure sso --profile nope" in proc.stderr


def test_an_expired_sso_session_is_one_line_naming_the_fix(no_credentials, tmp_path):
    """A real botocore SSO profile whose token cache is empty (never logged in, or expired)."""
    (tmp_path / "config").write_text(
        "[profile dev]\nsso_session = corp\nsso_account_id = 123456789012\nsso_role_name = Deployer\n"
        "region = us-west-2\n\n[sso-session corp]\nsso_start_url = https://example.awsapps.com/start\n"
        "sso_region = us-east-1\nsso_registration_scopes = sso:account:access\n")
    proc = run_ops("--profile", "dev", "status", env={"AWS_CONFIG_FILE": str(tmp_path / "config"),
                                                      "HOME": str(tmp_path)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: the AWS SSO session has expired or was never started")
    assert "run `aws sso login --profile dev`" in proc.stderr


def test_an_unreachable_endpoint_is_one_line_naming_the_fix(no_credentials):
    from testkit.servers import free_port
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = run_ops("status", env={"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                                  "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: cannot reach {endpoint}")
    assert "check the network or proxy" in proc.stderr


def test_profile_reaches_the_commands_ops_runs(monkeypatch, tmp_path):
    from ops.cli import build_context, parser

    config = tmp_path / "config"
    config.write_text("[profile deployer]\nregion = us-west-2\n\n[profile other]\nregion = us-west-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_PROFILE", "other")  # restored after the test; --profile wins over it
    ctx = build_context(parser().parse_args(["--profile", "deployer", "status"]))
    assert ctx.aws.session.profile_name == "deployer"
    assert os.environ["AWS_PROFILE"] == "deployer", "pulumi and docker must use the same profile"


def test_every_verb_and_argument_is_described():
    from ops.cli import parser

    top = parser()
    [verbs] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    for action in top._actions:
        assert action.help, f"option {action.option_strings} has no help"
    helps = {choice.dest: choice.help for choice in verbs._choices_actions}
    for name, sub in verbs.choices.items():
        assert helps.get(name), f"verb {name} has no one-line help"
        assert sub.description and len(sub.description) > len(helps[name]) / 2, f"verb {name} has no description"
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.dest} has no help"
    proc = subprocess.run([sys.executable, "-m", "ops", "scale", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert "desired number of tasks" in proc.stdout and "Sets the service's desired count" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ops", "deploy", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert "The guided deploy" in proc.stdout and "--yes" in proc.stdout


def test_ops_names_match_what_the_pulumi_program_declares():
    sys.path.insert(0, str(REPO / "infra_pulumi"))
    from ml_api_infra.mocks import run_program, stack_config

    program = run_program(stack_config("prod"))
    stack = load_stack("prod")
    out = program.outputs
    assert (stack.region, stack.cluster, stack.service, stack.repository, stack.log_group,
            stack.scaling_resource_id) == (out["region"], out["clusterName"], out["serviceName"],
                                           out["ecrRepositoryName"], out["logGroupName"],
                                           out["scalingResourceId"])
    assert program.one("aws:lb/loadBalancer:LoadBalancer").inputs["name"] == stack.load_balancer
    assert program.one("aws:lb/targetGroup:TargetGroup").inputs["name"] == stack.target_group
    # `ops destroy` keeps the repository (and its lifecycle policy) out of its first `pulumi destroy`.
    from ops.testing import urn_type

    kept = {urn_type(u) for u in program.urns if urn_selected(u, [stack.registry_urns])}
    assert kept == {"ml-api:registry:Registry", "aws:ecr/repository:Repository",
                    "aws:ecr/lifecyclePolicy:LifecyclePolicy"}, kept
    container = json.loads(program.one("aws:ecs/taskDefinition:TaskDefinition").inputs["containerDefinitions"])[0]
    assert container["name"] == CONTAINER_NAME, "update swaps the image of this container"


def test_runner_echoes_commands_and_hides_secret_stdin():
    printed = []
    result = Runner(echo=printed.append)(["cat"], stdin="s3cret", capture=True, secret_stdin=True)
    assert result.stdout == "s3cret"
    assert printed == ["$ cat < (secret)"]


def test_runner_reports_missing_tools_and_failures(monkeypatch, tmp_path):
    run = Runner(echo=lambda _line: None)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no pulumi, no docker
    with pytest.raises(OpsError, match=r"`pulumi` not found: install the Pulumi CLI"):
        run(["pulumi", "up"])
    with pytest.raises(OpsError, match=r"`docker` not found: install Docker"):
        run(["docker", "push", "x"])
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('no such stack'); sys.exit(3)"]
    with pytest.raises(OpsError, match=r"failed \(exit 3\): no such stack"):
        run(failing, capture=True)
    assert run(failing, capture=True, check=False).returncode == 3
