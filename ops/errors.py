class OpsError(Exception):
    """A failure the operator can act on; the CLI prints the message (no traceback) and exits 2."""
