"""What the PostgreSQL server reports (settings, pg_stat_activity), shared by doctor and sidecar."""
