"""The ops CLI's edges: credentials missing, stack config, the real subprocess runner, and that
ops finds resources under the names the Pulumi program gives them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ops.aws import Aws
from ops.errors import OpsError
from ops.runner import Runner
from ops.stack import CONTAINER_NAME, load_stack

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
    assert stack.registry_urn == "urn:pulumi:dev::ml-api::ml-api:registry:Registry::ml-api-dev"


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
    # `ops deploy` creates the repository first with `pulumi up --target <this URN>`.
    assert stack.registry_urn in program.urns, [u for u in program.urns if "registry" in u]
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
