from django.contrib import admin
from django.urls import include, path

from .views import pages

urlpatterns = [
    path("", pages.overview, name="overview"),
    path("engines/<int:pk>/", pages.engine_detail, name="engine"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
