"""The Ray Serve deployments and the typed builder of the application graph."""
