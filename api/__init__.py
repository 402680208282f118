"""HTTP only: the litestar app, its controllers and the mapping of domain errors to answers."""
