"""Scheduling and dramatiq actors only; the work itself lives in `ledger/` and `integration/`."""
