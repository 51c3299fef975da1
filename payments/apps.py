from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class PaymentsConfig(AppConfig):
    name = "payments"
    verbose_name = _("Payments")

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from payments.sales import sqlite_functions_install

        # The sales' local day on SQLite, which has no time zones (payments.sales).
        connection_created.connect(sqlite_functions_install, dispatch_uid="payments.sales")
