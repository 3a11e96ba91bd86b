"""New task definition revisions and waiting for an ECS rolling deployment to settle.

A deployment ends one of four ways: COMPLETED (all new tasks healthy, old ones drained), FAILED
with the circuit breaker rolling back to the previous revision, FAILED with nothing to roll back to
(the service's first deployment), or still running at our timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import botocore.exceptions

from ops.aws import error_code
from ops.errors import OpsError
from ops.stack import CONTAINER_NAME

# describe_task_definition returns read-only fields too; register_task_definition takes these.
REGISTERABLE = ("family", "taskRoleArn", "executionRoleArn", "networkMode", "containerDefinitions",
                "volumes", "placementConstraints", "requiresCompatibilities", "cpu", "memory",
                "runtimePlatform", "ephemeralStorage", "pidMode", "ipcMode", "proxyConfiguration")


def register_revision(ecs: Any, current_arn: str, image: str, environment: dict[str, str] | None = None) -> str:
    """Register the next revision of `current_arn` with the api container on `image` (and, if given,
    with `environment` as its whole environment)."""
    described = ecs.describe_task_definition(taskDefinition=current_arn, include=["TAGS"])
    definition = described["taskDefinition"]
    spec = {k: definition[k] for k in REGISTERABLE if definition.get(k) not in (None, [], {})}
    containers = [dict(c) for c in spec["containerDefinitions"]]
    api = [c for c in containers if c["name"] == CONTAINER_NAME]
    if not api:
        raise OpsError(f"task definition {current_arn} has no container named {CONTAINER_NAME!r}")
    api[0]["image"] = image
    if environment is not None:
        api[0]["environment"] = [{"name": k, "value": v} for k, v in sorted(environment.items())]
    spec["containerDefinitions"] = containers
    if described.get("tags"):
        spec["tags"] = described["tags"]
    return ecs.register_task_definition(**spec)["taskDefinition"]["taskDefinitionArn"]


@dataclass
class RolloutResult:
    # "completed" | "rolled_back" (to task_definition) | "failed" (task_definition could not start
    # and there was no earlier deployment to go back to)
    outcome: str
    task_definition: str
    detail: str = ""
    failed: str = ""  # the revision that did not come up (rolled_back, failed)


def revision_number(task_definition_arn: str) -> int:
    return int(task_definition_arn.rsplit(":", 1)[1])


def previous_revision(ecs: Any, current_arn: str) -> str | None:
    """The newest ACTIVE revision of the family older than `current_arn`, or None."""
    family = current_arn.rsplit("/", 1)[1].rsplit(":", 1)[0]
    arns = [arn for page in ecs.get_paginator("list_task_definitions").paginate(
                familyPrefix=family, status="ACTIVE")
            for arn in page["taskDefinitionArns"]
            if arn.rsplit("/", 1)[1].rsplit(":", 1)[0] == family]
    older = [arn for arn in arns if revision_number(arn) < revision_number(current_arn)]
    return max(older, key=revision_number, default=None)


def api_container(ecs: Any, task_definition_arn: str) -> dict:
    containers = ecs.describe_task_definition(taskDefinition=task_definition_arn)["taskDefinition"]["containerDefinitions"]
    return next(c for c in containers if c["name"] == CONTAINER_NAME)


def environment_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("environment", [])}


STOPPED_TASKS_SHOWN = 5


def stopped_task_reasons(ecs: Any, cluster: str, service: str, task_definition: str) -> list[str]:
    """Why the service's recently stopped tasks of `task_definition` stopped (ECS keeps stopped
    tasks about an hour): `<task id>: <stoppedReason> (<container>: <reason or exit code>)`."""
    arns = ecs.list_tasks(cluster=cluster, serviceName=service, desiredStatus="STOPPED").get("taskArns", [])
    if not arns:
        return []
    tasks = ecs.describe_tasks(cluster=cluster, tasks=arns[:100]).get("tasks", [])
    reasons = []
    for task in tasks:
        if task_definition and task.get("taskDefinitionArn") != task_definition:
            continue
        containers = "; ".join(
            f"{c['name']}: {c.get('reason') or 'exit ' + str(c.get('exitCode'))}"
            for c in task.get("containers", []) if c.get("reason") or c.get("exitCode") not in (None, 0))
        line = f"{task['taskArn'].rsplit('/', 1)[-1]}: {task.get('stoppedReason', 'stopped')}"
        reasons.append(f"{line} ({containers})" if containers else line)
    return reasons[:STOPPED_TASKS_SHOWN]


def describe_service(ecs: Any, cluster: str, service: str) -> dict:
    try:
        found = ecs.describe_services(cluster=cluster, services=[service])
    except botocore.exceptions.ClientError as err:
        if error_code(err) != "ClusterNotFoundException":
            raise
        found = {}
    services = [s for s in found.get("services", []) if s.get("status") != "INACTIVE"]
    if not services:
        raise OpsError(f"ECS service {service} not found in cluster {cluster}: "
                       f"is the stack deployed? (`python -m ops deploy`)")
    return services[0]


def wait_for_rollout(ecs: Any, cluster: str, service: str, task_definition: str, *,
                     echo: Callable[[str], None], timeout: float = 1200, poll: float = 15,
                     sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> RolloutResult:
    """Poll until the deployment of `task_definition` completes or the circuit breaker rolls back."""
    deadline = clock() + timeout
    last = ""
    while True:
        svc = describe_service(ecs, cluster, service)
        deployments = svc["deployments"]
        ours = next((d for d in deployments if d["taskDefinition"] == task_definition), None)
        primary = next((d for d in deployments if d["status"] == "PRIMARY"), None)
        if ours is None and svc["taskDefinition"] != task_definition:
            # The circuit breaker replaced our deployment with one of the previous revision.
            return RolloutResult("rolled_back", primary["taskDefinition"] if primary else svc["taskDefinition"],
                                 "the deployment is gone; the previous revision is primary", task_definition)
        if ours is None:  # update_service accepted, the deployment not listed yet
            ours = {"status": "PENDING", "runningCount": 0, "desiredCount": svc["desiredCount"]}
        state = ours.get("rolloutState", "IN_PROGRESS")
        line = (f"  {state.lower()}: {ours['runningCount']}/{ours['desiredCount']} running, "
                f"{ours.get('pendingCount', 0)} pending, {ours.get('failedTasks', 0)} failed; "
                f"{len(deployments)} deployment(s)")
        if line != last:
            echo(line)
            last = line
        if state == "FAILED" or (ours["status"] == "ACTIVE" and primary is not None):
            back_to = primary["taskDefinition"] if primary else ""
            if back_to in ("", task_definition):  # a first deployment has nothing to go back to
                return RolloutResult("failed", task_definition, ours.get("rolloutStateReason", ""), task_definition)
            return RolloutResult("rolled_back", back_to, ours.get("rolloutStateReason", ""), task_definition)
        if state == "COMPLETED" and len(deployments) == 1 and ours["runningCount"] == ours["desiredCount"]:
            return RolloutResult("completed", task_definition, ours.get("rolloutStateReason", ""))
        if clock() >= deadline:
            raise OpsError(f"service {service} still rolling out {task_definition} after {timeout:.0f} s; "
                           f"watch it with `python -m ops status`")
        sleep(poll)
