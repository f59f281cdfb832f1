"""Retort's dashboard: a Django project and app (settings, ASGI, consumers, pages)."""
