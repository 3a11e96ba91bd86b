"""The real service on a BentoML that moved an internal the fast path uses: for the start-up check test.

Served as `bentoml serve tests.mismatched_bentoml_service:XGBoostService`. BentoML's app factory
loses `batch_infer`, as an upgrade renaming it would; nothing else changes.
"""

from _bentoml_impl.server.app import ServiceAppFactory

del ServiceAppFactory.batch_infer

from service import XGBoostService  # noqa: E402,F401
