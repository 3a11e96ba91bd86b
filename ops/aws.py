"""boto3 clients for the stack's region, and a credentials check with an actionable message."""

from __future__ import annotations

from typing import Any, Optional

import boto3
import botocore.exceptions

from ops.errors import OpsError


class Aws:
    """Clients for one region, created once each. Tests pass a session bound to moto."""

    def __init__(self, region: str, session: Optional[boto3.session.Session] = None) -> None:
        self.region = region
        self.session = session or boto3.session.Session()
        self._clients: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.session.client(service, region_name=self.region)
        return self._clients[service]

    def check_credentials(self) -> str:
        """The caller's account id, or OpsError saying how to provide credentials."""
        try:
            return self.client("sts").get_caller_identity()["Account"]
        except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
            raise OpsError("no AWS credentials: set AWS_PROFILE (after `aws sso login`) or "
                           "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY") from None
        except botocore.exceptions.ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            raise OpsError(f"AWS rejected the credentials ({code}): refresh them "
                           f"(`aws sso login`) or check AWS_PROFILE") from None


def error_code(err: botocore.exceptions.ClientError) -> str:
    return err.response.get("Error", {}).get("Code", "")
