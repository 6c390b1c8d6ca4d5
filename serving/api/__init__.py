"""The HTTP API: the FastAPI app, its routes, error mapping, keys, tenants and limits."""
