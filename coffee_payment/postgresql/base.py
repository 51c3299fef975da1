"""Django's PostgreSQL backend, its pool replaced by one whose waits end at DATABASE_WAIT_TIMEOUT.

psycopg_pool's own health check backs off between failed checks (1 s, 2 s, 4 s ... inside one
`getconn`), and a failed reconnection is retried after a backoff as long: after a restart a request
slept through dead connections one by one while the database was back (docs/architecture.md,
"Database").
"""

from __future__ import annotations

from time import monotonic
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool, PoolTimeout


class BoundedWaitPool(ConnectionPool):
    """Hands out only working connections, within `timeout`, never sleeping between checks.

    A connection that fails its check goes back (the pool replaces it at once), and so does every
    idle one that fails too: a restart kills them together, so one found dead is the moment to test
    the rest. What is left of the wait is spent in the pool's queue, which a new connection reaches
    as soon as the server accepts one; a short `reconnect_timeout` keeps failed connection attempts
    from backing off past the outage.
    """

    def getconn(self, timeout: float | None = None) -> Any:
        budget = self.timeout if timeout is None else timeout
        deadline = monotonic() + budget
        while (left := deadline - monotonic()) > 0:
            connection = super().getconn(timeout=left)
            try:
                self.check_connection(connection)
            except psycopg.Error:
                connection.close()  # closed, it is replaced whatever state the check left it in
                self.putconn(connection)
                self.check()
                continue
            return connection
        raise PoolTimeout(f"couldn't get a working connection after {budget:.2f} sec")


class DatabaseWrapper(base.DatabaseWrapper):
    @property
    def pool(self) -> BoundedWaitPool | None:
        # Django's own property (django/db/backends/postgresql/base.py), building a BoundedWaitPool
        # that checks connections itself. Django keeps its pools in `_connection_pools`, one per
        # alias and process, where close_pool() and the pool gauges (coffee_payment/metrics.py) find them.
        pool_options = self.settings_dict["OPTIONS"].get("pool")
        if self.alias == base.NO_DB_ALIAS or not pool_options:
            return None
        if self.alias not in self._connection_pools:
            if self.settings_dict.get("CONN_MAX_AGE", 0) != 0:
                raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
            connect_kwargs = self.get_connection_params()
            connect_kwargs["autocommit"] = True  # as Django's: it sets autocommit itself later
            pool = BoundedWaitPool(
                kwargs=connect_kwargs, open=False, configure=self._configure_connection, check=None,
                **({} if pool_options is True else pool_options),
            )
            self._connection_pools.setdefault(self.alias, pool)
        return self._connection_pools[self.alias]
