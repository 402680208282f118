"""One controller per resource, each with its guards."""
