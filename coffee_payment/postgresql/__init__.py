"""Django's PostgreSQL backend with a connection pool whose waits are bounded (`base.py`)."""
