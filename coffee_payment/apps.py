from django.apps import AppConfig


class CoffeePaymentConfig(AppConfig):
    # Installed for its management commands (show_config) and system checks; it has no models.
    name = "coffee_payment"
    verbose_name = "Coffee Payments Server"

    def ready(self) -> None:
        from coffee_payment import checks  # noqa: F401  registers the lean-path checks
