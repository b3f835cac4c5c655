"""The HTTP API of the service (FastAPI): ``create_app(runtime)``. See docs/service.md."""
