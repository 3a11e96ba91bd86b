"""The bucket of published models (`python -m ops publish-model` uploads, the task reads at start).

A model is one object, `s3://<bucket>/models/xgb_classifier/<version>`, in `bentoml models export`
format; `MODEL_URI` names it (model_store/source.py). The task role may read that prefix only.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from .settings import MODEL_PREFIX, StackSettings

MODEL_NAME = "xgb_classifier"


def default_bucket_name(prefix: str, account_id: str) -> str:
    """`<prefix>-models-<account id>` (bucket names are global); `python -m ops` derives the same."""
    return f"{prefix}-models-{account_id}"


def model_read_policy(bucket: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "ReadPublishedModels", "Effect": "Allow", "Action": ["s3:GetObject"],
        "Resource": f"arn:aws:s3:::{bucket}/{MODEL_PREFIX}/{MODEL_NAME}/*"}]})


class ModelBucket(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:models:ModelBucket", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        bucket_name = (pulumi.Output.from_input(settings.model_bucket) if settings.model_bucket else
                       aws.get_caller_identity_output().account_id.apply(
                           lambda account: default_bucket_name(settings.prefix, account)))
        self.bucket = aws.s3.Bucket(f"{name}-models", bucket=bucket_name, tags=settings.tags, opts=child)
        aws.s3.BucketPublicAccessBlock(
            f"{name}-models", bucket=self.bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        # A published version is never overwritten by accident: rolling back to it stays possible.
        aws.s3.BucketVersioning(f"{name}-models", bucket=self.bucket.id,
                                versioning_configuration={"status": "Enabled"}, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-models", bucket=self.bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}], opts=child)
        self.register_outputs({"bucket": self.bucket.bucket})
