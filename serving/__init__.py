"""The serving internals behind service.py: request contract, settings, metrics, the fast path."""
