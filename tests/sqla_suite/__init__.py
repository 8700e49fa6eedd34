"""SQLAlchemy's own tests run bare and with every engine watched: the gate of scripts/sqla-suite."""
