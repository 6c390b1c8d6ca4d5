"""The service's scoring core: per-tenant indexes and the write path (no Ray, no HTTP)."""
