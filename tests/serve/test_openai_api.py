"""The server through the official `openai` client and raw HTTP: greedy answers equal the offline engine's,
streamed deltas add up to the non-streamed text, usage counts the real tokens, concurrent requests do not
change each other's answers, and /health and /metrics answer."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from conftest import MAX_MODEL_LEN, MODEL_NAME
from prometheus_client.parser import text_string_to_metric_families

from hymba.engine import LLM, SamplingParams

PROMPTS = ["The quick brown", "Meta tokens come first", "hello there", "SSM heads side by side", "naïve café 世界",
           "the window slides"]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def offline(loaded):
    model, tokenizer = loaded
    return LLM(model, tokenizer, max_num_seqs=1, max_model_len=MAX_MODEL_LEN, prefill_chunk_size=64)


def token_ids(choice) -> list[int]:
    return choice.model_extra["token_ids"]


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL_NAME]
    assert models[0].model_extra["max_model_len"] == MAX_MODEL_LEN


def test_greedy_completion_equals_the_offline_engine(client, offline, loaded):
    tokenizer = loaded[1]
    for prompt in PROMPTS[:2]:
        r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=24, temperature=0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
        want = offline.generate(prompt, SamplingParams(max_tokens=24, temperature=0, ignore_eos=True))[0]
        choice = r.choices[0]
        assert choice.text == want.outputs[0].text
        assert token_ids(choice) == want.outputs[0].token_ids
        assert choice.finish_reason == "length" and r.object == "text_completion" and r.model == MODEL_NAME
        assert r.usage.prompt_tokens == len(tokenizer.encode(prompt)) == len(want.prompt_token_ids)
        assert r.usage.completion_tokens == 24 and r.usage.total_tokens == r.usage.prompt_tokens + 24


def test_token_id_prompts_and_a_list_of_one_prompt(client, loaded):
    ids = loaded[1].encode("The quick brown")
    texts = [client.completions.create(model=MODEL_NAME, prompt=p, max_tokens=8, temperature=0).choices[0].text
             for p in ("The quick brown", ids, ["The quick brown"], [ids])]
    assert len(set(texts)) == 1


def test_streamed_deltas_add_up_to_the_completion(client):
    kw = dict(model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=30, temperature=0, extra_body={"ignore_eos": True})
    whole = client.completions.create(**kw)
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert not chunks[-1].choices and chunks[-1].usage.completion_tokens == 30
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_the_raw_stream_is_server_sent_events_ending_with_done(server):
    body = {"model": MODEL_NAME, "prompt": "The quick brown", "max_tokens": 10, "temperature": 0, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", server.url + "/completions", json=body, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    chunks = [json.loads(e[6:]) for e in events[:-2]]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_chat_uses_the_chat_template(client, offline, loaded):
    tokenizer = loaded[1]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
    r = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_completion_tokens=16, temperature=0,
                                       extra_body={"ignore_eos": True})
    want = offline.chat(messages, SamplingParams(max_tokens=16, temperature=0, ignore_eos=True))[0]
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want.outputs[0].text
    prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    assert r.usage.prompt_tokens == len(prompt_ids) and r.usage.completion_tokens == 16

    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=16, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "length"


def test_concurrent_requests_answer_as_if_alone(client):
    def ask(prompt):
        r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=20, temperature=0,
                                      extra_body={"ignore_eos": True, "return_token_ids": True})
        return token_ids(r.choices[0])

    alone = [ask(p) for p in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # 6 requests on 4 slots: some wait, all batch
        together = list(pool.map(ask, PROMPTS))
    assert together == alone


def test_seeded_sampling_is_reproducible(client):
    kw = dict(model=MODEL_NAME, prompt="hello", max_tokens=12, temperature=0.9, top_p=0.9, seed=7,
              extra_body={"top_k": 40})
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text


def test_health(server):
    r = httpx.get(server.base + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def metric_values(server) -> dict:
    r = httpx.get(server.base + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_requests_and_tokens(server, client):
    before = metric_values(server)
    r = client.completions.create(model=MODEL_NAME, prompt="The quick brown", max_tokens=7, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert httpx.post(server.url + "/completions", json={"prompt": "x", "temperature": -1}).status_code == 400
    after = metric_values(server)

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0)

    assert moved("hymba_requests_total", endpoint="/v1/completions", status="200") == 1
    assert moved("hymba_requests_total", endpoint="/v1/completions", status="400") == 1
    assert moved("hymba_prompt_tokens_total") == r.usage.prompt_tokens
    assert moved("hymba_generation_tokens_total") == 7
    assert moved("hymba_request_finished_total", finish_reason="length") == 1
    for name in ("hymba_time_to_first_token_seconds_count", "hymba_time_per_output_token_seconds_count",
                 "hymba_e2e_request_latency_seconds_count"):
        assert moved(name) == 1
    assert after[("hymba_num_slots", ())] == 4
    assert after[("hymba_num_requests_waiting", ())] == 0 and after[("hymba_num_requests_running", ())] == 0
    assert ("hymba_slot_usage", ()) in after


def test_streamed_token_ids_add_up_to_the_completion(client):
    kw = dict(model=MODEL_NAME, prompt="naïve café 世界", max_tokens=40, temperature=0,
              extra_body={"ignore_eos": True, "return_token_ids": True})
    whole = token_ids(client.completions.create(**kw).choices[0])
    chunks = client.completions.create(stream=True, **kw)
    assert [t for c in chunks for t in token_ids(c.choices[0])] == whole
