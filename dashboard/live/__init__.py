"""Server-rendered pieces of the live pages (shared by page views and live sockets)."""
