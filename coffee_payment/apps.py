from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class CoffeePaymentConfig(AppConfig):
    # Installed for its management commands (show_config) and system checks; it has no models.
    name = "coffee_payment"
    verbose_name = "Coffee Payments Server"

    def ready(self) -> None:
        from coffee_payment import lean_path_checks  # noqa: F401  registers the lean-path checks


class AdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the project's site (coffee_payment/admin_site.py) as admin.site."""

    # Not this package's own app config (that is CoffeePaymentConfig).
    default = False
    default_site = "coffee_payment.admin_site.AdminSite"
