"""Bad requests get 400 with OpenAI's error body and leave the server serving; a full queue gets 429; a client
that leaves a stream early frees its slot."""

import sys
import time

import httpx
import pytest
from conftest import MAX_MODEL_LEN, MODEL_NAME, ServerThread

from hymba.cli import main


def completion(server, **body):
    return httpx.post(server.url + "/completions", json={"model": MODEL_NAME, **body}, timeout=30)


def assert_error(r, status: int, param=None, says: str = ""):
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and says in error["message"]


def assert_still_serving(server):
    r = completion(server, prompt="hello", max_tokens=3, temperature=0)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("body, param, says", [
    ({}, "prompt", "prompt is required"),
    ({"prompt": "hi", "max_tokens": -1}, "max_tokens", "max_tokens must be an integer >= 1"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens", "max_tokens must be an integer >= 1"),
    ({"prompt": "hi", "max_tokens": 10**9}, None, "max_model_len"),
    ({"prompt": "hi", "max_tokens": "5"}, "max_tokens", "valid integer"),
    ({"prompt": "hi", "temperature": -1}, "temperature", "temperature must be >= 0"),
    ({"prompt": "hi", "top_p": 0}, "top_p", "top_p must be in (0, 1]"),
    ({"prompt": "hi", "top_p": 1.5}, "top_p", "top_p must be in (0, 1]"),
    ({"prompt": "hi", "n": 2}, "n", "n must be 1"),
    ({"prompt": "hi", "logprobs": 2}, "logprobs", "not supported"),
    ({"prompt": ["a", "b"]}, "prompt", "one prompt per request"),
    ({"prompt": 5}, "prompt", ""),
    ({"prompt": ""}, "prompt", "empty"),
    ({"prompt": "hi " * MAX_MODEL_LEN}, None, "max_model_len"),
    ({"prompt": [1, 10**6]}, None, "outside the vocabulary"),
    ({"prompt": "hi", "stream": "yes"}, "stream", ""),
])
def test_bad_completion_requests_are_400(server, body, param, says):
    assert_error(completion(server, **body), 400, param, says)
    assert_still_serving(server)


def test_malformed_json_and_non_object_bodies_are_400(server):
    for raw in (b'{"prompt": "hi",', b"\xff\xfe", b"[1, 2]", b""):
        r = httpx.post(server.url + "/completions", content=raw, headers={"Content-Type": "application/json"})
        assert_error(r, 400, None, "")
    assert_still_serving(server)


@pytest.mark.parametrize("body, param, says", [
    ({}, "messages", "messages is required"),
    ({"messages": []}, "messages", "messages is empty"),
    ({"messages": [{"content": "hi"}]}, "messages.0.role", "required"),
    ({"messages": [{"role": "user", "content": "hi " * MAX_MODEL_LEN}]}, "messages", "no room left"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -3}, "max_completion_tokens",
     "max_tokens must be an integer >= 1"),
])
def test_bad_chat_requests_are_400(server, body, param, says):
    r = httpx.post(server.url + "/chat/completions", json={"model": MODEL_NAME, **body})
    assert_error(r, 400, param, says)
    assert_still_serving(server)


def test_a_model_without_a_chat_template_is_400_for_chat(loaded):
    model, tokenizer = loaded
    plain = type(tokenizer).__new__(type(tokenizer))
    plain.__dict__.update(tokenizer.__dict__, _chat_template=None)
    srv = ServerThread(model, plain)
    try:
        r = httpx.post(srv.url + "/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert_error(r, 400, "messages", "no chat template")
        assert_still_serving(srv)
    finally:
        srv.stop()


def test_a_full_queue_is_429(loaded):
    srv = ServerThread(*loaded, max_waiting=0)  # every request finds the queue full
    try:
        for stream in (False, True):
            assert_error(completion(srv, prompt="hi", stream=stream), 429, None, "retry later")
        assert httpx.get(srv.base + "/health").status_code == 200
        assert srv.engine.stats["prompt_tokens"] == 0
    finally:
        srv.stop()


def test_a_client_leaving_a_stream_frees_its_slot(loaded):
    srv = ServerThread(*loaded)
    try:
        max_tokens = MAX_MODEL_LEN - 8
        body = {"prompt": "hello", "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True}
        with httpx.stream("POST", srv.url + "/completions", json=body, timeout=30) as r:
            assert r.status_code == 200
            next(r.iter_lines())  # the first chunk, then hang up
        deadline = time.monotonic() + 10
        while srv.engine.num_running or srv.engine.has_work():
            assert time.monotonic() < deadline, "the abandoned request still holds its slot"
            time.sleep(0.01)
        assert 0 < srv.engine.stats["generation_tokens"] < max_tokens  # stopped early
        deadline = time.monotonic() + 5
        while 'hymba_request_finished_total{finish_reason="abort"} 1.0' not in httpx.get(srv.base + "/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert_still_serving(srv)
    finally:
        srv.stop()


def test_a_client_leaving_before_a_non_streamed_answer_frees_its_slot(loaded):
    srv = ServerThread(*loaded, max_model_len=512)
    try:
        body = {"prompt": "hello", "max_tokens": 500, "temperature": 0, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while the answer is being computed
            httpx.post(srv.url + "/completions", json=body, timeout=httpx.Timeout(30, read=0.3))
        deadline = time.monotonic() + 10
        while srv.engine.num_running or srv.engine.has_work():
            assert time.monotonic() < deadline, "the abandoned request still holds its slot"
            time.sleep(0.01)
        assert 0 < srv.engine.stats["generation_tokens"] < 500
        assert_still_serving(srv)
    finally:
        srv.stop()


def test_without_the_serve_extra_the_command_names_it(checkpoint_dir, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "hymba.serve" or m.startswith("hymba.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ImportError
    assert main(["serve", "--model", checkpoint_dir]) == 2
    err = capsys.readouterr().err
    assert "hymba serve: error:" in err and "'serve' extra" in err and "fastapi" in err


def test_a_draining_server_refuses_new_work_with_503(server):
    server.app.state.draining = True  # what SIGTERM sets
    try:
        assert_error(completion(server, prompt="hi"), 503, None, "shutting down")
        assert httpx.get(server.base + "/health").status_code == 503
    finally:
        server.app.state.draining = False
    assert_still_serving(server)


@pytest.mark.parametrize("given, taken", [("100", 64), ("16", 16), ("5", 16), ("4096", 4096)])
def test_serve_takes_a_prefill_chunk_as_generate_does(given, taken):
    """`hymba serve --prefill-chunk-size` takes a size down to a power of two >= 16, as `hymba generate` does."""
    import argparse

    from hymba.cli import serve as serve_cli
    from hymba.cli.options import chunk_size

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--model", "somewhere", "--prefill-chunk-size", given])
    assert args.prefill_chunk_size == taken == chunk_size(given)
