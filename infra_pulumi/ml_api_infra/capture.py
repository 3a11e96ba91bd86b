"""The capture bucket (serving/capture.py writes the answered records there) and the task role's
one permission on it: s3:PutObject under the capture prefix. Declared only when `capturePercent`
is set (capture is off by default, as in the service).

Private (public access blocked), SSE-S3 encrypted, objects expired after `captureRetentionDays`
(captured records are personal data at most sites: keep them no longer than retraining needs), and
incomplete multipart uploads aborted after a day.
"""

from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from .settings import StackSettings

CAPTURE_PREFIX = "capture"


def put_policy(bucket_arn: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "CaptureWrite", "Effect": "Allow", "Action": ["s3:PutObject"],
        "Resource": f"{bucket_arn}/{CAPTURE_PREFIX}/*"}]})


class CaptureBucket(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, *, task_role: aws.iam.Role,
                 opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:capture:CaptureBucket", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = aws.s3.Bucket(
            f"{name}-capture", bucket_prefix=f"{settings.prefix}-capture-"[:37], tags=settings.tags, opts=child)
        aws.s3.BucketPublicAccessBlock(
            f"{name}-capture", bucket=self.bucket.id, block_public_acls=True, block_public_policy=True,
            ignore_public_acls=True, restrict_public_buckets=True, opts=child)
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-capture", bucket=self.bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}, "bucket_key_enabled": True}],
            opts=child)
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-capture", bucket=self.bucket.id,
            rules=[{"id": "expire-captured-records", "status": "Enabled", "filter": {"prefix": f"{CAPTURE_PREFIX}/"},
                    "expiration": {"days": settings.capture_retention_days},
                    "abort_incomplete_multipart_upload": {"days_after_initiation": 1}}],
            opts=child)
        aws.iam.RolePolicy(f"{name}-task-capture", role=task_role.id, policy=self.bucket.arn.apply(put_policy), opts=child)
        self.uri = self.bucket.bucket.apply(lambda bucket: f"s3://{bucket}/{CAPTURE_PREFIX}")
        self.register_outputs({"captureUri": self.uri})
