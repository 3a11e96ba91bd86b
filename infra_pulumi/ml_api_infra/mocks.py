"""Run the program under `pulumi.runtime.set_mocks` (no engine, no AWS) and record what it declares.

The tests use this to check policy on the inputs the engine would receive (camelCase keys, as in
`pulumi preview --json`), and the stack outputs.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pulumi
import yaml
from pulumi.runtime.mocks import MockMonitor

from .program import build
from .settings import load_settings

PROJECT_DIR = Path(__file__).resolve().parent.parent
ACCOUNT_ID = "123456789012"
REGION = "us-west-2"
AVAILABILITY_ZONES = ["us-west-2a", "us-west-2b", "us-west-2c", "us-west-2d"]
# us-west-2's Elastic Load Balancing account (delivers ALB access logs) and ALB hosted zone.
ELB_ACCOUNT_ID = "797873946194"
ALB_ZONE_ID = "Z1H1FL5HABSF5"


@dataclass
class Declared:
    type: str
    name: str
    inputs: dict[str, Any]


@dataclass
class Program:
    resources: list[Declared] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    urns: list[str] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Declared]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name_suffix: str = "") -> Declared:
        found = [r for r in self.of_type(type_) if r.name.endswith(name_suffix)]
        assert len(found) == 1, (f"expected one {type_} named *{name_suffix}, "
                                 f"found {[r.name for r in found]}")
        return found[0]


def _arn(type_: str, name: str) -> str:
    service = type_.split(":")[1].split("/")[0]
    return f"arn:aws:{service}:{REGION}:{ACCOUNT_ID}:{type_.rsplit(':', 1)[-1].lower()}/{name}"


def pushed_stdout(create: str, version: str) -> str:
    """What `python -m ops push --repository-url URL` prints: build and push progress, then the image."""
    args = shlex.split(create)
    url = args[args.index("--repository-url") + 1]
    return f"==> building the Bento\n==> pushing {url}:{version}\n__image__:{url}:{version}"


class RecordingMocks(pulumi.runtime.Mocks):
    """Echo inputs back as state, plus the computed attributes the program reads, computed as AWS
    (or the provider) computes them."""

    def __init__(self) -> None:
        self.declared: list[Declared] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.declared.append(Declared(args.typ, args.name, dict(args.inputs)))
        state = dict(args.inputs)
        physical = state.get("name") or args.name
        state.setdefault("arn", _arn(args.typ, physical))
        if args.typ == "aws:ecr/repository:Repository":
            state["repositoryUrl"] = f"{ACCOUNT_ID}.dkr.ecr.{REGION}.amazonaws.com/{physical}"
        if args.typ == "aws:lb/loadBalancer:LoadBalancer":
            state["arnSuffix"] = f"app/{physical}/50dc6c495c0c9188"
            state["dnsName"] = f"{physical}-1234567890.{REGION}.elb.amazonaws.com"
            state["zoneId"] = ALB_ZONE_ID
        if args.typ == "aws:s3/bucket:Bucket":
            state["bucket"] = state.get("bucket") or f"{state['bucketPrefix']}20260101000000000000000001"
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
            return state["bucket"], state
        if args.typ == "aws:acm/certificate:Certificate":
            domain = state["domainName"]
            state["domainValidationOptions"] = [{
                "domainName": domain, "resourceRecordName": f"_3f9a2c.{domain}.",
                "resourceRecordType": "CNAME", "resourceRecordValue": "_7b1d0e.xlfgrmvvlj.acm-validations.aws."}]
        if args.typ == "aws:route53/record:Record":
            state["fqdn"] = state["name"].rstrip(".")
        if args.typ == "aws:ecs/service:Service":
            # An ECS service's id is its ARN.
            arn = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:service/{physical}/{physical}"
            state["arn"] = arn
            return arn, state
        if args.typ == "command:local:Command":
            # The build's version is new whenever the triggers (the build's fingerprint) change.
            state["stdout"] = pushed_stdout(state["create"], str(state["triggers"][0])[:16])
            state["stderr"] = ""
        if args.typ == "aws:ecs/taskDefinition:TaskDefinition":
            state["arn"] = f"arn:aws:ecs:{REGION}:{ACCOUNT_ID}:task-definition/{state['family']}:1"
        if args.typ == "aws:lb/targetGroup:TargetGroup":
            state["arnSuffix"] = f"targetgroup/{physical}/73e2d6bc24d8a067"
        if args.typ == "aws:amp/workspace:Workspace":
            workspace_id = "ws-0f1e2d3c-4b5a-6978-8695-a4b3c2d1e0f9"
            state["arn"] = f"arn:aws:aps:{REGION}:{ACCOUNT_ID}:workspace/{workspace_id}"
            state["prometheusEndpoint"] = f"https://aps-workspaces.{REGION}.amazonaws.com/workspaces/{workspace_id}/"
            return workspace_id, state
        if args.typ == "aws:cloudwatch/logGroup:LogGroup":
            state["arn"] = f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:{physical}"
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"accountId": ACCOUNT_ID, "arn": f"arn:aws:iam::{ACCOUNT_ID}:user/ci",
                    "userId": "AIDEXAMPLE", "id": ACCOUNT_ID}, []
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": AVAILABILITY_ZONES, "zoneIds": [f"usw2-az{i}" for i in range(1, 5)],
                    "id": REGION}, []
        if args.token == "aws:elb/getServiceAccount:getServiceAccount":
            return {"arn": f"arn:aws:iam::{ELB_ACCOUNT_ID}:root", "id": ELB_ACCOUNT_ID}, []
        raise NotImplementedError(f"no mock for invoke {args.token}")


def use_mocks(mocks: pulumi.runtime.Mocks, stack: str = "prod", monitor: Optional[MockMonitor] = None) -> None:
    """pulumi.runtime.set_mocks, with the event loop Pulumi's runtime expects in the main thread.

    Pulumi calls asyncio.get_event_loop(), which raises once an earlier asyncio.run() in the same
    process (any async test) has closed and unset the main thread's loop.
    """
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(mocks, project="ml-api", stack=stack, preview=False, monitor=monitor)


def stack_config(stack: str = "prod") -> dict[str, str]:
    """The committed `Pulumi.<stack>.yaml` config, as the engine would pass it."""
    loaded = yaml.safe_load((PROJECT_DIR / f"Pulumi.{stack}.yaml").read_text())
    return {key: str(value) for key, value in (loaded.get("config") or {}).items()}


def run_program(config: Optional[dict[str, str]] = None, secret_keys: Optional[list[str]] = None,
                stack: str = "prod") -> Program:
    """Run the program with `config` (full keys, e.g. `ml-api:minCapacity`) and record it."""
    mocks = RecordingMocks()
    monitor = MockMonitor(mocks)
    pulumi.runtime.set_all_config(dict(config or {}), secret_keys or [])
    use_mocks(mocks, stack, monitor)
    program = Program(resources=mocks.declared)

    @pulumi.runtime.test
    def run():
        return pulumi.Output.from_input(build(load_settings())).apply(program.outputs.update)

    run()
    # The engine leaves the root stack's type out of its children's URNs (`...::ml-api::ml-api:
    # registry:Registry::ml-api-prod`); MockMonitor.make_urn keeps it, so drop it here.
    program.urns = [urn.replace("::pulumi:pulumi:Stack$", "::", 1) for urn in monitor.resources]
    return program


def task_container(stack: str = "prod") -> dict:
    """The service's container definition, as the program declares it for the committed stack."""
    import json

    from .service import CONTAINER_NAME

    task = run_program(stack_config(stack)).one("aws:ecs/taskDefinition:TaskDefinition")
    [definition] = [c for c in json.loads(task.inputs["containerDefinitions"]) if c["name"] == CONTAINER_NAME]
    return definition
