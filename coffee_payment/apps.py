from django.apps import AppConfig


class CoffeePaymentConfig(AppConfig):
    # Installed for its management commands (show_config); it has no models.
    name = "coffee_payment"
    verbose_name = "Coffee Payments Server"
