"""The pure ASGI middleware, the life of one request, and the live page."""
