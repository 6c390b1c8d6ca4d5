"""Serving: Ray Serve deployments, the HTTP API, batch Ray jobs, signal sinks and the CLI."""
