from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("payments.urls")),
    path("admin/", admin.site.urls),
]

# Django's error pages as the customer error page, in the request's language.
handler400 = "payments.views.bad_request"
handler404 = "payments.views.page_not_found"
handler500 = "payments.views.server_error"
