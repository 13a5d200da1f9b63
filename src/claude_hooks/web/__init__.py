"""The HTTP side: the FastAPI app (webhook intake, JSON API, cancel, health)."""
