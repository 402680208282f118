"""What every process needs beneath the API, the jobs and the command line: configuration, the database
(embedded or not), structured logging, Prometheus metrics and the runtime that holds them together."""

__version__ = "0.1.0"
