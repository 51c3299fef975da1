from django.urls import path

from payments import machine_api, views

# Every view here is async: coffee_payment.E002 refuses a sync one on the lean paths (/health, /ready,
# /v1/: all of these), where it would hold a thread per request.
urlpatterns = [
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("v1/pay", views.scan, name="scan"),
    path("v1/orders/<str:order_id>/payment", views.payment_start, name="payment-start"),
    path("v1/payments/webhook", views.payment_webhook, name="payment-webhook"),
    path("v1/order-status/<str:order_id>", views.order_status, name="order-status"),
    path("v1/orders/<str:order_id>", views.order_page, name="order-page"),
    path("v1/machine/orders/<str:order_id>", machine_api.machine_order, name="machine-order"),
    path("v1/machine/orders/<str:order_id>/report", machine_api.machine_order_report, name="machine-order-report"),
    path("v1/machine/menu", machine_api.machine_menu, name="machine-menu"),
]
