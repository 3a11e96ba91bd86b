"""Optional API key in Secrets Manager, injected into the container as XGB_API_KEY via `secrets`.

Set it with `pulumi config set --secret apiKey ...`; without it the API is open (the WAF still
rate-limits) and no secret is created.
"""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from .settings import StackSettings


class ApiKeySecret(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:secrets:ApiKeySecret", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.secret = aws.secretsmanager.Secret(
            f"{name}-secret", name_prefix=f"{settings.prefix}/api-key-",
            description="X-API-Key required on /predict* (env XGB_API_KEY)",
            recovery_window_in_days=7, tags=settings.tags, opts=child)
        aws.secretsmanager.SecretVersion(f"{name}-value", secret_id=self.secret.id,
                                         secret_string=settings.api_key, opts=child)
        self.register_outputs({"secretArn": self.secret.arn})
