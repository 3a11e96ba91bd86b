"""Models without a new image: `publish-model` uploads one to the stack's model bucket, and
`update --model-uri/--candidate-uri` runs it (a new task definition revision, same image).

The bucket is the program's (infra_pulumi/ml_api_infra/models.py): `ml-api:modelBucket`, else
`<prefix>-models-<account id>`; objects are `models/xgb_classifier/<version>` in
`bentoml models export` format, which the service imports at start (model_store/source.py).
"""

from __future__ import annotations

from typing import Optional

import botocore.exceptions

from model_store.bundle import MODEL_NAME, ModelContractError
from model_store.source import CANDIDATE_URI_ENV, MODEL_URI_ENV, ModelUri, publish
from ops.aws import error_code
from ops.context import Context
from ops.errors import OpsError

MODEL_PREFIX = "models"  # infra_pulumi/ml_api_infra/settings.py MODEL_PREFIX: what the task role may read


def model_bucket(ctx: Context, account: str) -> str:
    return ctx.stack.model_bucket or f"{ctx.stack.prefix}-models-{account}"


def publish_model(ctx: Context, tag: Optional[str] = None) -> str:
    """Export `tag` (default the newest) from the local store and upload it; returns its URI."""
    account = ctx.aws.check_credentials()
    bucket = model_bucket(ctx, account)
    tag = tag or f"{MODEL_NAME}:latest"
    ctx.echo(f"==> exporting {tag} (`bentoml models export` format) to s3://{bucket}/{MODEL_PREFIX}/{MODEL_NAME}/")
    try:
        uri = publish(tag, bucket, MODEL_PREFIX, s3=ctx.client("s3"))
    except ModelContractError as err:
        raise OpsError(str(err)) from None
    except botocore.exceptions.ClientError as err:
        if error_code(err) == "NoSuchBucket":
            raise OpsError(f"S3 bucket {bucket} not found: `python -m ops deploy` creates it") from None
        raise
    ctx.echo(f"==> published {uri}")
    ctx.echo(f"    serve it:          python -m ops update --model-uri {uri}")
    ctx.echo(f"    as the candidate:  python -m ops update --candidate-uri {uri} --candidate-mode shadow")
    return str(uri)


def check_published(ctx: Context, uri: str, variable: str) -> ModelUri:
    """The URI names a model object that exists (before a revision is registered that would not start)."""
    try:
        parsed = ModelUri.parse(uri, variable)
    except ModelContractError as err:
        raise OpsError(str(err)) from None
    try:
        ctx.client("s3").head_object(Bucket=parsed.bucket, Key=parsed.key)
    except botocore.exceptions.ClientError as err:
        if error_code(err) in ("404", "NoSuchKey", "NoSuchBucket"):
            raise OpsError(f"{uri} does not exist: publish it with `python -m ops publish-model`") from None
        raise
    return parsed


def with_model_uris(ctx: Context, environment: dict[str, str], model_uri: Optional[str],
                    candidate_uri: Optional[str], candidate_mode: Optional[str]) -> dict[str, str]:
    """The task environment serving `model_uri` as the primary and/or `candidate_uri` as the candidate."""
    changed = dict(environment)
    if model_uri:
        check_published(ctx, model_uri, MODEL_URI_ENV)
        changed.pop("MODEL_TAG", None)
        changed[MODEL_URI_ENV] = model_uri
    if candidate_uri:
        check_published(ctx, candidate_uri, CANDIDATE_URI_ENV)
        changed.pop("XGB_CANDIDATE_TAG", None)
        changed[CANDIDATE_URI_ENV] = candidate_uri
        changed.setdefault("XGB_CANDIDATE_PERCENT", "10")
    if candidate_mode:
        changed["XGB_CANDIDATE_MODE"] = candidate_mode
    return changed
