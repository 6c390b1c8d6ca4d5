"""Fitted model artifacts shipped with the package (JSON data, no code)."""
