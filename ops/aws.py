"""boto3 clients for the stack's region and profile, and AWS SDK failures turned into one line that
names the problem and the fix (the CLI prints it and exits 2, never a traceback)."""

from __future__ import annotations

import os
from typing import Any, Optional

import boto3
import botocore.exceptions

from ops.errors import OpsError

NO_CREDENTIALS = ("no AWS credentials: set AWS_PROFILE (after `aws sso login`) or "
                  "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
EXPIRED_CODES = {"ExpiredToken", "ExpiredTokenException", "RequestExpired"}
REJECTED_CODES = {"InvalidClientTokenId", "UnrecognizedClientException", "SignatureDoesNotMatch",
                  "InvalidSignatureException", "AuthFailure"}
CONNECTION_ERRORS = (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError,
                     botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectionClosedError,
                     botocore.exceptions.ProxyConnectionError, botocore.exceptions.SSLError)
SSO_ERRORS = (botocore.exceptions.SSOTokenLoadError, botocore.exceptions.UnauthorizedSSOTokenError,
              botocore.exceptions.TokenRetrievalError, botocore.exceptions.SSOError)


def profile_hint() -> str:
    profile = os.environ.get("AWS_PROFILE")
    return f" --profile {profile}" if profile else ""


def explain(err: Exception) -> Optional[str]:
    """One line for an AWS SDK failure the operator can fix, or None if it is not one."""
    if isinstance(err, botocore.exceptions.ProfileNotFound):
        config = os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")
        return (f"AWS profile '{err.kwargs.get('profile')}' is not in {config}: create it "
                f"(`aws configure sso --profile {err.kwargs.get('profile')}`) or pass another --profile")
    if isinstance(err, SSO_ERRORS):
        return (f"the AWS SSO session has expired or was never started ({type(err).__name__}): "
                f"run `aws sso login{profile_hint()}` and try again")
    if isinstance(err, (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError)):
        return NO_CREDENTIALS
    if isinstance(err, CONNECTION_ERRORS):
        endpoint = err.kwargs.get("endpoint_url", "the AWS endpoint")
        return (f"cannot reach {endpoint} ({type(err).__name__}): check the network or proxy, the "
                f"region, and AWS_ENDPOINT_URL if set")
    if isinstance(err, botocore.exceptions.NoRegionError):
        return "no AWS region: set aws:region in the stack config, pass --region or set AWS_REGION"
    if isinstance(err, botocore.exceptions.ClientError):
        code = error_code(err)
        message = err.response.get("Error", {}).get("Message", "")
        if code in EXPIRED_CODES:
            return (f"the AWS credentials have expired ({code}): refresh them "
                    f"(`aws sso login{profile_hint()}`, or new access keys)")
        if code in REJECTED_CODES:
            return (f"AWS rejected the credentials ({code}): check AWS_PROFILE / --profile or the "
                    f"access keys, and that they belong to the intended account")
        if code.startswith("AccessDenied") or code == "UnauthorizedOperation":
            return (f"AWS denied {err.operation_name} ({code}): the credentials lack that permission; "
                    f"use a role allowed to manage the stack ({message})")
        return f"AWS {err.operation_name}: {message or code}"
    if isinstance(err, botocore.exceptions.BotoCoreError):
        return f"AWS SDK: {err}"
    return None


class Aws:
    """Clients for one region (and optionally a named profile), created once each. Tests pass a
    session bound to moto."""

    def __init__(self, region: str, session: Optional[boto3.session.Session] = None,
                 profile: Optional[str] = None) -> None:
        self.region = region
        try:
            self.session = session or boto3.session.Session(profile_name=profile)
        except botocore.exceptions.ProfileNotFound as err:
            raise OpsError(explain(err)) from None
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.region)
        return self._clients[service]

    def check_credentials(self) -> str:
        """The caller's account id, or OpsError saying how to provide credentials."""
        try:
            return self.client("sts").get_caller_identity()["Account"]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
            raise OpsError(explain(err)) from None


def error_code(err: botocore.exceptions.ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")
