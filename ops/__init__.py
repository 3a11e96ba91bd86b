"""Operate the AWS deployment: `python -m ops <verb>` (deploy, update, status, report, health,
logs, cleanup, scale, destroy). See docs/deployment.md."""
