"""Pages. Every one requires a login (LoginRequiredMiddleware)."""
