"""`logs`: the service's CloudWatch log events since a moment, optionally followed (tail -f)."""

from __future__ import annotations

import datetime as dt
import re

import botocore.exceptions

from ops.aws import error_code
from ops.context import Context
from ops.errors import OpsError

DURATION = re.compile(r"^(\d+)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """`90s`, `10m`, `2h`, `1d` -> seconds."""
    match = DURATION.match(text.strip())
    if not match:
        raise OpsError(f"bad duration {text!r}: use a number and s/m/h/d, e.g. 10m")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


def _format(event: dict) -> str:
    ts = dt.datetime.fromtimestamp(event["timestamp"] / 1000, dt.timezone.utc)
    return f"{ts:%Y-%m-%d %H:%M:%S} {event['logStreamName']} {event['message'].rstrip()}"


def _events_since(ctx: Context, start_ms: int, pattern: str):
    kwargs = {"logGroupName": ctx.stack.log_group, "startTime": start_ms}
    if pattern:
        kwargs["filterPattern"] = pattern
    try:
        for page in ctx.client("logs").get_paginator("filter_log_events").paginate(**kwargs):
            yield from page["events"]
    except botocore.exceptions.ClientError as err:
        if error_code(err) == "ResourceNotFoundException":
            raise OpsError(f"log group {ctx.stack.log_group} not found in {ctx.stack.region}: "
                           f"is the stack deployed?") from None
        raise


def tail(ctx: Context, since: str = "10m", follow: bool = False, pattern: str = "") -> int:
    """Print events; with `follow`, keep polling for new ones until interrupted. Returns the count."""
    now_ms = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1000)
    start_ms = now_ms - parse_duration(since) * 1000
    seen: dict[str, int] = {}  # event id -> timestamp, for events at or after start_ms
    printed = 0
    while True:
        for event in sorted(_events_since(ctx, start_ms, pattern), key=lambda e: e["timestamp"]):
            if event["eventId"] in seen:
                continue
            seen[event["eventId"]] = event["timestamp"]
            ctx.echo(_format(event))
            printed += 1
        if not follow:
            return printed
        # Re-read from the newest timestamp (events can share a millisecond); ids drop repeats.
        start_ms = max(seen.values(), default=start_ms)
        seen = {k: ts for k, ts in seen.items() if ts >= start_ms}
        ctx.sleep(ctx.poll_seconds)
