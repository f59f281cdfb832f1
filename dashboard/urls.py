from django.contrib import admin
from django.urls import include, path

from .views import pages

urlpatterns = [
    path("", pages.overview, name="overview"),
    path("engines/<int:pk>/", pages.engine_detail, name="engine"),
    path("apps/<int:pk>/sessions/", pages.app_sessions, name="sessions"),
    path("sessions/<int:pk>/", pages.session_detail, name="session"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("admin/", admin.site.urls),
]
