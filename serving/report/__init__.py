"""``marketguard report``: the effect of each signal against outcome labels (docs/report.md)."""
