"""The batch Ray job over a whole catalogue (``marketguard batch``): see docs/batch.md."""
