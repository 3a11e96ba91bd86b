"""Stack config parsing and validation: bad values fail before anything is declared."""

from __future__ import annotations

import sys
from pathlib import Path

import pulumi
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "infra_pulumi"))

from ml_api_infra.mocks import RecordingMocks, use_mocks  # noqa: E402
from ml_api_infra.network import subnet_cidrs  # noqa: E402
from ml_api_infra.settings import SettingsError, StackSettings, load_settings  # noqa: E402


def settings_from(config: dict[str, str]) -> StackSettings:
    # The `ml-api:` namespace is the project's name, which the runtime settings carry.
    use_mocks(RecordingMocks())
    pulumi.runtime.set_all_config(config, [])
    try:
        return load_settings()
    finally:
        pulumi.runtime.set_all_config({}, [])


def test_defaults_are_the_seed_values():
    s = settings_from({})
    assert (s.project, s.environment, s.region) == ("ml-api", "prod", "us-west-2")
    assert (s.min_capacity, s.max_capacity, s.cpu_target, s.memory_target) == (5, 20, 70, 80)
    assert (s.task_cpu, s.task_memory) == (1024, 2048)
    assert s.prefix == "ml-api-prod"


def test_overrides_are_read_from_config():
    s = settings_from({"ml-api:environment": "staging", "ml-api:minCapacity": "1",
                       "ml-api:maxCapacity": "3", "aws:region": "eu-west-1", "ml-api:natPerAz": "true"})
    assert (s.environment, s.min_capacity, s.max_capacity, s.region, s.nat_per_az) == \
        ("staging", 1, 3, "eu-west-1", True)
    assert s.prefix == "ml-api-staging"


@pytest.mark.parametrize("config, key", [
    ({"ml-api:minCapacity": "10", "ml-api:maxCapacity": "5"}, "maxCapacity"),
    ({"ml-api:minCapacity": "0"}, "minCapacity"),
    ({"ml-api:cpuTarget": "120"}, "cpuTarget"),
    ({"ml-api:taskCpu": "1000"}, "taskCpu"),
    ({"ml-api:taskMemory": "512"}, "taskMemory"),
    ({"ml-api:rangeCheck": "maybe"}, "rangeCheck"),
    ({"ml-api:azCount": "1"}, "azCount"),
    ({"ml-api:wafRateLimit": "5"}, "wafRateLimit"),
    ({"ml-api:loadTestCidrs": '["203.0.113.300/32"]'}, "loadTestCidrs"),
    ({"ml-api:loadTestCidrs": '["2001:db8::/64"]'}, "loadTestCidrs"),
    ({"ml-api:certificateArn": "arn:aws:acm:us-west-2:123456789012:certificate/abc"}, "certificateArn"),
    ({"ml-api:hostedZoneId": "Z0123456789ABCDEFGHIJ"}, "hostedZoneId"),
    ({"ml-api:domainName": "api.example.com"}, "domainName"),
    ({"ml-api:candidatePercent": "120"}, "candidatePercent"),
    ({"ml-api:candidateMode": "blue-green"}, "candidateMode"),
    ({"ml-api:shadowMinAgreement": "90"}, "shadowMinAgreement"),
])
def test_invalid_values_name_their_key(config, key):
    with pytest.raises(SettingsError, match=f"ml-api:{key}"):
        settings_from(config)


def test_region_comes_from_the_stack_then_aws_region(monkeypatch):
    """Without `aws:region` the AWS provider deploys to AWS_REGION; the program's region-dependent
    values (log driver region, S3 endpoint) must follow it, as `python -m ops` does."""
    from ops.stack import load_stack

    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert settings_from({}).region == "eu-central-1"
    assert settings_from({"aws:region": "us-east-2"}).region == "us-east-2"
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    assert settings_from({}).region == "us-west-2"
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert load_stack("prod").region == "us-west-2", "the committed stack sets aws:region"


@pytest.mark.parametrize("aws_region,aws_default_region", [(None, None), ("eu-central-1", None), (None, "ap-south-1"), ("eu-central-1", "ap-south-1")])
def test_ops_and_the_program_pick_the_same_region_without_aws_region_config(monkeypatch, aws_region, aws_default_region):
    """ops (which does not import pulumi) and the program each resolve the default region: they must agree."""
    import ml_api_infra.settings as program
    import ops.stack

    for name, value in (("AWS_REGION", aws_region), ("AWS_DEFAULT_REGION", aws_default_region)):
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    assert ops.stack.default_region() == program.default_region() == (aws_region or aws_default_region or "us-west-2")


def test_subnet_blocks_are_disjoint_and_sized_per_az():
    public, private = subnet_cidrs("10.0.0.0/16", 3)
    assert public == ["10.0.0.0/20", "10.0.16.0/20", "10.0.32.0/20"]
    assert private == ["10.0.48.0/20", "10.0.64.0/20", "10.0.80.0/20"]
    with pytest.raises(ValueError, match="too small"):
        subnet_cidrs("10.0.0.0/26", 3)


@pytest.mark.parametrize("stack", ["prod"])
def test_stack_config_has_no_unknown_keys(stack):
    """Pulumi ignores config nobody reads: a typo like `ml-api:maxCapacty` would deploy the default."""
    from ml_api_infra.mocks import PROJECT_DIR, stack_config
    from ml_api_infra.settings import CONFIG_KEYS, SECRET_KEYS

    project = yaml.safe_load((PROJECT_DIR / "Pulumi.yaml").read_text())["name"]
    known = {f"{project}:{k}" for k in (*CONFIG_KEYS, *SECRET_KEYS)} | {"aws:region"}
    unknown = set(stack_config(stack)) - known
    assert unknown == set(), f"Pulumi.{stack}.yaml sets keys the program never reads: {sorted(unknown)}"


def test_every_config_key_sets_its_field():
    from ml_api_infra.settings import CONFIG_KEYS

    samples = {"get": "x-1", "get_int": "3", "get_float": "55.5", "get_bool": "true",
               "get_object": '["198.51.100.0/24"]'}
    fields = {f: getter for f, getter in CONFIG_KEYS.values()}
    assert len(fields) == len(CONFIG_KEYS), "two keys write the same field"
    use_mocks(RecordingMocks())
    pulumi.runtime.set_all_config({f"ml-api:{k}": samples[g] for k, (_f, g) in CONFIG_KEYS.items()}, [])
    try:
        cfg = pulumi.Config()
        read = {f: getattr(cfg, g)(k) for k, (f, g) in CONFIG_KEYS.items()}
    finally:
        pulumi.runtime.set_all_config({}, [])
    assert {repr(v) for v in read.values()} == {repr(v) for v in ("x-1", 3, 55.5, True, ["198.51.100.0/24"])}
    assert set(fields) <= set(StackSettings.__dataclass_fields__), \
        f"unknown fields {set(fields) - set(StackSettings.__dataclass_fields__)}"


def test_the_deployment_docs_config_table_is_the_settings():
    """docs/deployment.md's table of stack config keys and defaults is generated from settings.py."""
    from ml_api_infra.config_docs import DESCRIPTIONS, DOC, current_table, render
    from ml_api_infra.settings import CONFIG_KEYS, SECRET_KEYS

    assert set(DESCRIPTIONS) == set(CONFIG_KEYS) | set(SECRET_KEYS), "every key is described"
    assert current_table(DOC.read_text()) == render(), \
        "run `python infra_pulumi/ml_api_infra/config_docs.py --write`"
    assert "| `requestsPerTarget` | 60000 |" in render()
