"""Publishing signals to sinks (Redis, signed webhooks) through the store's durable outbox."""
