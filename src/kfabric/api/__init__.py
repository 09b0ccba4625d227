"""The HTTP API (FastAPI, ``/v1``): thin routers over the service's use cases."""
