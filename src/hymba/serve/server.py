"""`serve()`: load a checkpoint, start the engine and run the HTTP server until SIGTERM or SIGINT.

On a signal the server stops accepting connections, answers 503 to new requests on open ones, lets the
requests in flight finish (up to `drain_timeout` seconds), stops the engine and returns.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

import uvicorn

from ..engine import AsyncEngine, Engine, load_model_and_tokenizer
from .app import build_app


class _Server(uvicorn.Server):
    """uvicorn's server that marks the app as draining as soon as a shutdown signal arrives."""

    def __init__(self, config: uvicorn.Config, app):
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig, frame) -> None:
        self._app.state.draining = True
        super().handle_exit(sig, frame)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one, read back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(model_dir: str, host: str = "127.0.0.1", port: int = 8000, *, tokenizer_dir: str | None = None,
          device: str = "auto", dtype: str = "auto", max_num_seqs: int = 64, max_model_len: int | None = None,
          prefill_chunk_size: int | None = None, max_waiting: int = 256, served_model_name: str | None = None,
          drain_timeout: float = 30.0, log_level: str = "warning") -> int:
    """Serve the checkpoint in `model_dir` over OpenAI's HTTP API until a shutdown signal; returns 0."""
    t0 = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(model_dir, tokenizer_dir, device=device, dtype=dtype)
    engine = Engine(model, tokenizer, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                    prefill_chunk_size=prefill_chunk_size)
    if model.device.type == "cuda":
        engine.warm_up()
    async_engine = AsyncEngine(engine, max_waiting=max_waiting)
    name = served_model_name or os.path.basename(os.path.normpath(model_dir))
    app = build_app(async_engine, name, tokenizer)
    sock = bind(host, port)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=drain_timeout,
                            lifespan="off")
    server = _Server(config, app)
    bound = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    print(f"hymba serve: {name} on http://{url_host}:{bound}/v1 ({model.device}, {max_num_seqs} slots, "
          f"context {engine.max_model_len}; started in {time.perf_counter() - t0:.1f} s)", flush=True)
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal it stopped on once it is done, through the handler it found installed:
        # installing one that does nothing lets the drain below finish and the process exit 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        async_engine.shutdown(drain=True, timeout=drain_timeout)
        sock.close()
    print("hymba serve: stopped", file=sys.stderr, flush=True)
    return 0
