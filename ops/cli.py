"""`python -m ops <verb>`: argument parsing and error reporting; the verbs live in their modules."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import botocore.exceptions

from ops import cleanup, deploy, logs, scale, status
from ops.aws import Aws
from ops.context import Context
from ops.errors import OpsError
from ops.runner import Runner
from ops.stack import INFRA_DIR, load_stack

DESCRIPTION = "Operate the ml-api deployment on AWS (ECS Fargate, managed by the Pulumi program)."


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ops", description=DESCRIPTION)
    p.add_argument("--stack", default=os.environ.get("OPS_STACK", "prod"),
                   help="Pulumi stack (default: $OPS_STACK or prod)")
    p.add_argument("--infra-dir", type=Path, default=INFRA_DIR, help="the Pulumi program's directory")
    p.add_argument("--region", help="override the stack's aws:region")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("deploy", help="build, push, pulumi up the whole stack, wait until stable")
    up = verbs.add_parser("update", help="roll out a new image as a new task definition revision")
    up.add_argument("--image-tag", help="an image tag already in ECR (default: build and push one)")
    verbs.add_parser("status", help="service, tasks and deployments")
    rep = verbs.add_parser("report", help="status, target health and CloudWatch metrics as tables")
    rep.add_argument("--minutes", type=int, default=60, help="metrics window (default 60)")
    hl = verbs.add_parser("health", help="probe /livez and /readyz through the ALB; exit 1 if unhealthy")
    hl.add_argument("--url", help="probe this base URL instead of the ALB's")
    lg = verbs.add_parser("logs", help="print the service's log events")
    lg.add_argument("--since", default="10m", help="how far back (90s, 10m, 2h, 1d; default 10m)")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    lg.add_argument("--filter", default="", help="CloudWatch Logs filter pattern")
    cl = verbs.add_parser("cleanup", help="delete ECR images beyond the newest N (never those in use)")
    cl.add_argument("--keep", type=int, default=10, help="images to keep (default 10)")
    cl.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    sc = verbs.add_parser("scale", help="set the desired task count within the autoscaling bounds")
    sc.add_argument("count", type=int)
    ds = verbs.add_parser("destroy", help="empty the ECR repository and pulumi destroy the stack")
    ds.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return p


def dispatch(ctx: Context, args: argparse.Namespace) -> int:
    verb = args.verb
    if verb == "deploy":
        return 0 if deploy.deploy(ctx).outcome == "completed" else 1
    if verb == "update":
        return 0 if deploy.update(ctx, args.image_tag).outcome == "completed" else 1
    if verb == "status":
        status.status(ctx)
    elif verb == "report":
        status.report(ctx, args.minutes)
    elif verb == "health":
        return 0 if status.health(ctx, args.url) else 1
    elif verb == "logs":
        logs.tail(ctx, args.since, args.follow, args.filter)
    elif verb == "cleanup":
        cleanup.cleanup(ctx, args.keep, args.dry_run)
    elif verb == "scale":
        scale.scale(ctx, args.count)
    elif verb == "destroy":
        deploy.destroy(ctx, args.yes)
    return 0


def main(argv: Optional[Sequence[str]] = None, context: Optional[Context] = None) -> int:
    """Exit codes: 0 done, 1 unhealthy or rolled back, 2 an error the message explains."""
    args = parser().parse_args(argv)
    try:
        if context is None:
            stack = load_stack(args.stack, args.infra_dir)
            if args.region:
                stack = dataclasses.replace(stack, region=args.region)
            context = Context(stack=stack, aws=Aws(stack.region), run=Runner())
        return dispatch(context, args)
    except OpsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
        print("error: no AWS credentials: set AWS_PROFILE (after `aws sso login`) or "
              "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", file=sys.stderr)
        return 2
    except botocore.exceptions.ClientError as err:
        print(f"error: AWS {err.operation_name}: {err.response['Error'].get('Message', err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
