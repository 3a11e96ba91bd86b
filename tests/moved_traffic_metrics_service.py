"""The real service on a BentoML whose request-metrics middleware renamed `_setup`/`_is_setup` (to
`setup`/`is_setup`), as an upgrade might: for the fallback test of serving/bentoml_internals.py.

Served as `bentoml serve tests.moved_traffic_metrics_service:XGBoostService`. BentoML's own middleware
still works (its __call__ uses the new names); only what the fast path reaches for has moved.
"""

from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as _Middleware

_Middleware.setup = _Middleware._setup
del _Middleware._setup
_init, _call = _Middleware.__init__, _Middleware.__call__


def _renamed_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.is_setup = self.__dict__.pop("_is_setup")


async def _renamed_call(self, scope, receive, send):
    if not self.is_setup:
        self.setup()
        self.is_setup = True
    self.__dict__["_is_setup"] = True  # what the unchanged body of __call__ reads
    return await _call(self, scope, receive, send)


_Middleware.__init__ = _renamed_init
_Middleware.__call__ = _renamed_call

from service import XGBoostService  # noqa: E402,F401
