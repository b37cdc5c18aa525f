"""An OpenAI-compatible HTTP server over the continuous-batching engine (`hymba serve`); needs the `serve`
extra (fastapi, uvicorn, prometheus_client)."""

from .app import build_app
from .server import serve

__all__ = ["build_app", "serve"]
