"""The signal store: the authoritative record of items, edges, signals and labels."""
