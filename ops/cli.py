"""`python -m ops <verb>`: argument parsing and error reporting; the verbs live in their modules."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import botocore.exceptions

from ops import cleanup, deploy, image, logs, models, scale, status
from ops.aws import Aws, explain
from ops.context import Context
from ops.errors import OpsError
from ops.runner import Runner
from ops.stack import INFRA_DIR, load_stack

DESCRIPTION = "Operate the ml-api deployment on AWS (ECS Fargate, managed by the Pulumi program)."
EPILOG = "Exit codes: 0 done, 1 unhealthy, failed or rolled back, 2 an error the message explains."

# verb -> (one-line help, description shown by `python -m ops VERB --help`)
VERBS = {
    "deploy": ("preview the stack's changes, confirm, pulumi up (builds and pushes the image), wait",
               "The guided deploy. Selects (or creates) the Pulumi stack, shows `pulumi preview --diff`, "
               "asks before applying unless --yes, then runs `pulumi up`: the program builds the Bento and "
               "its image from this checkout and pushes it to the stack's ECR (unless ml-api:imageTag is "
               "pinned), updates the stack and waits until the service is steady. Exits 1 if the new "
               "tasks failed (rolled back, or nothing to roll back to)."),
    "push": ("build the Bento and its image, push it to the stack's ECR, print __image__:<uri>",
             "What `pulumi up` runs to build the image. Progress goes to stderr; stdout gets one line, "
             "`__image__:<repository>:<bento version>`. An image already in ECR is not pushed again."),
    "update": ("roll out a new image as a new task definition revision (no pulumi up)",
               "Builds and pushes a new image (or takes --image-tag from ECR), registers the next task "
               "definition revision with it, rolls it out and waits. On success the tag is pinned in the "
               "stack config (ml-api:imageTag), so the next `pulumi up` keeps it. With --model-uri / "
               "--candidate-uri (URIs `publish-model` printed) the revision keeps the running image and "
               "serves those models, imported from S3 when the tasks start; the stack config follows "
               "(ml-api:modelUri, ml-api:candidateUri)."),
    "publish-model": ("upload a model from the local store to the stack's model bucket; print its URI",
                      "`bentoml models export`s TAG (default xgb_classifier:latest) and uploads it to "
                      "s3://<modelBucket>/models/xgb_classifier/<version>, the URI `update --model-uri` and "
                      "`update --candidate-uri` run without a new image. Its last line is the URI."),
    "promote": ("make the candidate model the primary and clear the candidate (same image)",
                "Registers the next task definition revision with MODEL_TAG set to the running candidate "
                "(XGB_CANDIDATE_TAG) and the candidate settings removed, rolls it out and waits; on success the "
                "stack config follows (ml-api:modelTag set, ml-api:candidate* removed). `ops rollback` goes back "
                "to the revision with both models. Exits 1 if the new revision did not become healthy."),
    "rollback": ("go back to the previous task definition revision, or to an image tag",
                 "Points the service at the previous active task definition revision (or, with --to, a new "
                 "revision running that image from ECR), waits until it is stable and pins its image tag "
                 "in the stack config (and, going back over `ops promote`, its model settings). Exits 1 if the "
                 "rollback itself did not become healthy."),
    "status": ("service, tasks and deployments", "Service state, URL, image, task counts and every "
               "deployment with its rollout state."),
    "report": ("status, target health and CloudWatch metrics as tables",
               "Status, ALB target health, and CPU/memory, requests, 5xx and p99 latency over a window."),
    "health": ("probe /livez and /readyz through the ALB; exit 1 if unhealthy",
               "GET /livez and /readyz on the service's URL (https://<domainName> when the stack has one) "
               "and check ALB target health; exit 1 unless both answer 200 and no target is unhealthy."),
    "logs": ("print the service's log events", "Log events of all tasks in time order, optionally followed."),
    "cleanup": ("delete ECR images beyond the newest N (never those in use)",
                "Deletes images beyond the newest --keep, never one that a current deployment runs."),
    "scale": ("set the desired task count within the autoscaling bounds",
              "Sets the service's desired count. Refused outside minCapacity..maxCapacity; target "
              "tracking may change it again after its cooldown (to move the floor, set minCapacity)."),
    "destroy": ("pulumi destroy the stack, then delete its images",
                "Asks for the stack name, runs `pulumi destroy` for everything but the image repository, "
                "and only once that succeeded deletes the images and the repository. Refuses while the "
                "ALB has deletion protection (on for prod)."),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ops", description=DESCRIPTION, epilog=EPILOG)
    p.add_argument("--stack", default=os.environ.get("OPS_STACK", "prod"),
                   help="Pulumi stack (default: $OPS_STACK or prod)")
    p.add_argument("--infra-dir", type=Path, default=INFRA_DIR, help="the Pulumi program's directory")
    p.add_argument("--region", help="override the region (default: the stack's aws:region, else "
                                    "$AWS_REGION / $AWS_DEFAULT_REGION, else us-west-2)")
    p.add_argument("--profile", default=os.environ.get("AWS_PROFILE"),
                   help="AWS named profile for ops and the pulumi/docker it runs (default: $AWS_PROFILE)")
    verbs = p.add_subparsers(dest="verb", required=True, metavar="VERB",
                             help="what to do (`python -m ops VERB --help` describes each)")

    def verb(name: str) -> argparse.ArgumentParser:
        short, long = VERBS[name]
        return verbs.add_parser(name, help=short, description=long)

    dp = verb("deploy")
    dp.add_argument("--yes", action="store_true", help="apply without asking after the preview")
    dp.add_argument("--image-tag", help="deploy this image tag from ECR instead of building one (pins it)")
    ps = verb("push")
    ps.add_argument("--repository-url", help="push here (default: the stack's ECR repository)")
    up = verb("update")
    up.add_argument("--image-tag", help="an image tag already in ECR (default: build and push one)")
    up.add_argument("--model-uri", help="keep the image, serve this published model (MODEL_URI)")
    up.add_argument("--candidate-uri", help="keep the image, this published model as the candidate (CANDIDATE_MODEL_URI)")
    up.add_argument("--candidate-mode", choices=("shadow", "canary"), help="the candidate's mode (XGB_CANDIDATE_MODE)")
    pm = verb("publish-model")
    pm.add_argument("tag", nargs="?", help="model tag in the local store (default xgb_classifier:latest)")
    verb("promote")
    rb = verb("rollback")
    rb.add_argument("--to", metavar="TAG", help="roll back to this image tag from ECR instead of the "
                                                "previous task definition revision")
    verb("status")
    rep = verb("report")
    rep.add_argument("--minutes", type=int, default=60, help="metrics window (default 60)")
    hl = verb("health")
    hl.add_argument("--url", help="probe this base URL instead of the service's")
    lg = verb("logs")
    lg.add_argument("--since", default="10m", help="how far back (90s, 10m, 2h, 1d; default 10m)")
    lg.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    lg.add_argument("--filter", default="", help="CloudWatch Logs filter pattern")
    cl = verb("cleanup")
    cl.add_argument("--keep", type=int, default=10, help="images to keep (default 10)")
    cl.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    sc = verb("scale")
    sc.add_argument("count", type=int, help="desired number of tasks, within the autoscaling bounds "
                                            "(minCapacity..maxCapacity of the stack)")
    ds = verb("destroy")
    ds.add_argument("--yes", action="store_true", help="do not ask for the stack name")
    return p


def outcome(result) -> int:
    return 0 if result.outcome == "completed" else 1


def dispatch(ctx: Context, args: argparse.Namespace) -> int:
    verb = args.verb
    if verb == "deploy":
        return outcome(deploy.deploy(ctx, args.yes, args.image_tag))
    if verb == "update":
        return outcome(deploy.update(ctx, args.image_tag, args.model_uri, args.candidate_uri, args.candidate_mode))
    if verb == "publish-model":
        print(models.publish_model(ctx, args.tag), flush=True)
    if verb == "rollback":
        return outcome(deploy.rollback(ctx, args.to))
    if verb == "promote":
        return outcome(deploy.promote(ctx))
    if verb == "push":
        uri = image.push(ctx.aws, ctx.stack, ctx.run, ctx.echo, args.repository_url)
        print(f"{image.IMAGE_LINE_PREFIX}{uri}", flush=True)
    elif verb == "status":
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


def build_context(args: argparse.Namespace) -> Context:
    stack = load_stack(args.stack, args.infra_dir)
    if args.region:
        stack = dataclasses.replace(stack, region=args.region)
    if args.profile:
        os.environ["AWS_PROFILE"] = args.profile  # the pulumi and docker commands use it too
    if args.verb == "push":
        # stdout carries only the __image__ line (`pulumi up` reads it); progress goes to stderr.
        def echo(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
        return Context(stack=stack, aws=Aws(stack.region, profile=args.profile),
                       run=Runner(echo=echo, stream=sys.stderr), echo=echo)
    return Context(stack=stack, aws=Aws(stack.region, profile=args.profile), run=Runner())


def main(argv: Optional[Sequence[str]] = None, context: Optional[Context] = None) -> int:
    """Exit codes: 0 done, 1 unhealthy or rolled back, 2 an error the message explains."""
    args = parser().parse_args(argv)
    try:
        return dispatch(context or build_context(args), args)
    except OpsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        print(f"error: {explain(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
