"""What PostgreSQL reports (settings, activity, the Alembic revision), shared by the tools."""
