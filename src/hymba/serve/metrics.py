"""Prometheus metrics of one server: requests by endpoint and status, tokens, queue depth and slot use, and the
latencies people tune a server by (time to first token, time per output token, end to end).

Each app has its own CollectorRegistry, so that several servers (tests) in one process do not share counts.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..engine import Engine

ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.0, 2.5)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Engine):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("hymba_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter("hymba_prompt_tokens", "prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("hymba_generation_tokens", "tokens generated", registry=r)
        self.finished = Counter("hymba_request_finished", "generation requests by finish reason",
                                ["finish_reason"], registry=r)
        Gauge("hymba_num_requests_waiting", "requests queued for a slot",
              registry=r).set_function(lambda: engine.num_waiting)
        Gauge("hymba_num_requests_running", "requests holding a slot (prefilling or decoding)",
              registry=r).set_function(lambda: engine.num_running)
        Gauge("hymba_num_slots", "sequence slots of the engine (max_num_seqs)",
              registry=r).set_function(lambda: engine.pool.num_slots)
        Gauge("hymba_slot_usage", "fraction of the slots in use",
              registry=r).set_function(lambda: engine.num_running / engine.pool.num_slots)
        self.ttft = Histogram("hymba_time_to_first_token_seconds", "arrival to first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("hymba_time_per_output_token_seconds", "mean time between the generated tokens "
                              "of a request, after the first", buckets=PER_TOKEN_BUCKETS, registry=r)
        self.e2e = Histogram("hymba_e2e_request_latency_seconds", "arrival to the last token",
                             buckets=LATENCY_BUCKETS, registry=r)

    def count_request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in ENDPOINTS else "other", str(status)).inc()

    def observe(self, num_prompt: int, num_output: int, arrival: float, first_token: float | None,
                finished: float, finish_reason: str | None) -> None:
        """One generation request's tokens and latencies (times from time.monotonic)."""
        self.prompt_tokens.inc(num_prompt)
        self.generation_tokens.inc(num_output)
        self.finished.labels(finish_reason or "none").inc()
        if first_token is None:
            return
        self.ttft.observe(first_token - arrival)
        self.e2e.observe(finished - arrival)
        if num_output > 1:
            self.tpot.observe((finished - first_token) / (num_output - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
