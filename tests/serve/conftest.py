"""Fixtures for the server tests: the tiny checkpoint of tests/conftest.py loaded, and a real uvicorn server on a free
port in a background thread, built around an engine the tests can inspect."""

import threading
import time

import pytest
import uvicorn

from hymba.engine import AsyncEngine, Engine, load_model_and_tokenizer
from hymba.serve import build_app
from hymba.serve.server import bind

MODEL_NAME = "tiny-hymba"
MAX_MODEL_LEN = 192


@pytest.fixture(scope="session")
def loaded(checkpoint_dir):
    """(model, tokenizer) on the CPU, shared by the servers and the reference runs."""
    return load_model_and_tokenizer(checkpoint_dir, device="cpu", dtype="float32")


class ServerThread:
    """build_app + uvicorn on 127.0.0.1:<free port>, in a daemon thread; `url` is the API's base."""

    def __init__(self, model, tokenizer, max_num_seqs=4, max_waiting=256, max_model_len=MAX_MODEL_LEN):
        self.engine = Engine(model, tokenizer, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
                             prefill_chunk_size=64)
        self.async_engine = AsyncEngine(self.engine, max_waiting=max_waiting)
        self.app = build_app(self.async_engine, MODEL_NAME, tokenizer)
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.async_engine.shutdown(drain=False, timeout=5)
        self.sock.close()


@pytest.fixture(scope="module")
def server(loaded):
    srv = ServerThread(*loaded)
    yield srv
    srv.stop()
