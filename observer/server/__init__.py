"""What PostgreSQL reports (settings, pg_stat_activity, the Alembic revision), shared by the tools."""
