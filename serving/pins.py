"""The library versions the reaches into internals were written against, and a warning at start
when another is installed.

Each reach is listed, with its check and fallback, in the docstring table of the module that makes
it: serving/bentoml_internals.py (bentoml, starlette), serving/uvicorn_internals.py (uvicorn),
model_store/bundle.py (xgboost's C predict), serving/metrics.py (prometheus_client's histogram).
Every one is also checked at start, so a different version is served (with fallbacks) rather than
refused; this only says which module to re-check. The pins themselves are requirements.in's.
"""

from __future__ import annotations

import importlib.metadata
import logging

from model_store.bundle import XGBOOST_VERSION

from .bentoml_internals import BENTOML_VERSION, STARLETTE_VERSION
from .metrics import PROMETHEUS_CLIENT_VERSION
from .uvicorn_internals import UVICORN_VERSION

logger = logging.getLogger("xgb_service")

# distribution -> (the version the module was checked against, the module)
PINS = {
    "bentoml": (BENTOML_VERSION, "serving/bentoml_internals.py and model_store/stores.py"),
    "starlette": (STARLETTE_VERSION, "serving/bentoml_internals.py"),
    "uvicorn": (UVICORN_VERSION, "serving/uvicorn_internals.py"),
    "xgboost-cpu": (XGBOOST_VERSION, "model_store/bundle.py"),
    "prometheus-client": (PROMETHEUS_CLIENT_VERSION, "serving/metrics.py"),
}


def installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def differences(pins: dict[str, tuple[str, str]] = PINS) -> list[str]:
    """One line per pinned library whose installed version differs (xgboost-cpu may be installed as xgboost)."""
    lines = []
    for distribution, (pinned, module) in pins.items():
        version = installed(distribution) or (installed("xgboost") if distribution == "xgboost-cpu" else None)
        if version != pinned:
            lines.append(f"{distribution} {version or 'not installed'} is installed, {module} was checked against {pinned}: re-check it")
    return lines


def warn_if_not_pinned() -> list[str]:
    found = differences()
    for line in found:
        logger.warning("%s", line)
    return found
