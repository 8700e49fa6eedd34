"""Pool trackers: a watched engine's pool events, acquire seam and state; every live pool."""
