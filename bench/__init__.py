"""Benchmarks of the ledger core, each beside a pgbench reference run on the same PostgreSQL."""
