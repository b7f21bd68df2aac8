"""The OpenAI-compatible HTTP transport (Starlette on uvicorn): `create_app`, `HttpServer`."""
