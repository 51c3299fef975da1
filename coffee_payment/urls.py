from django.contrib import admin
from django.urls import include, path

from coffee_payment.metrics import metrics_view
from payments.scrape_metrics import database_metrics

urlpatterns = [
    path("", include("payments.urls")),
    # Prometheus scrapes the pod directly (any Host, like the probes); a proxied request gets 404.
    # The payments app's counts from the database come with every scrape.
    path("metrics", metrics_view, {"scrape_reads": (database_metrics,)}, name="metrics"),
    path("admin/", admin.site.urls),
]

# Django's error pages as the customer error page, in the request's language.
handler400 = "payments.views.bad_request"
handler404 = "payments.views.page_not_found"
handler500 = "payments.views.server_error"
