"""The real service, with model calls that stall on a marked record: for the request-timeout tests.

Served as `bentoml serve tests.stalling_service:XGBoostService`; nothing of this is in service.py.
A record whose first feature is STALL_MARKER stalls its model call for XGB_TEST_STALL_S seconds:
/predict's batch (on the event loop) awaits a sleep, /predict_batch's (on its thread) sleeps.
Other records are answered as usual.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

from service import XGBoostService

STALL_MARKER = 12345.0
STALL_S = float(os.environ.get("XGB_TEST_STALL_S", "0"))

_predict_rows = XGBoostService.apis["predict_rows"]
_rows_func = _predict_rows.func
_scored = XGBoostService.inner.scored


async def _stalling_rows(self, rows):
    if (rows[:, 0] == STALL_MARKER).any():
        await asyncio.sleep(STALL_S)
    return await _rows_func(self, rows)


def _stalling_scored(self, rows, *args, **kwargs):
    if threading.current_thread() is not threading.main_thread() and (rows[:, 0] == STALL_MARKER).any():
        time.sleep(STALL_S)
    return _scored(self, rows, *args, **kwargs)


_predict_rows.func = _stalling_rows
XGBoostService.inner.scored = _stalling_scored
