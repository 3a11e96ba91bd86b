"""Pulumi entry point: `pulumi up` in this directory (see docs/deployment.md)."""

import pulumi

from ml_api_infra.program import build
from ml_api_infra.settings import load_settings

for output_name, value in build(load_settings()).items():
    pulumi.export(output_name, value)
