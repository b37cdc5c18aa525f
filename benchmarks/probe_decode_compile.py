"""Probe (temporary): graph decode with and without the compiled step, in different orders in one process."""
import os, sys, time
import torch
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from bench_e2e import build_hymba, cuda_time, fill_hymba_cache, free_memory  # noqa
from hymba.engine.cuda_graph import CUDAGraphDecoder, StaticHybridCache
from torch._dynamo.utils import counters

B, CTX = 128, 8192
model = build_hymba("triton-conv")
tok = torch.randint(0, model.config.vocab_size, (B,), device="cuda")


def graph(compile, label):
    free_memory()
    t = time.time()
    dec = CUDAGraphDecoder(model, B, CTX + 64, compile=compile)
    setup = time.time() - t
    fill_hymba_cache(dec.cache, CTX)
    s = cuda_time(lambda: dec.step(tok), 20)
    dec.cache.length -= 21
    u = cuda_time(lambda: dec._forward_step(), 5)
    print(f"{label}: graph {s*1e3:.2f} ms/step ({B/s:.0f} tok/s), ungraphed step {u*1e3:.2f} ms, set-up {setup:.0f} s; "
          f"graphs {counters['stats'].get('unique_graphs')} frames {dict(counters['frames'])}", flush=True)


@torch.no_grad()
def eager(label):
    free_memory()
    cache = StaticHybridCache(model.config, B, CTX + 64, device="cuda", dtype=model.dtype)
    fill_hymba_cache(cache, CTX)
    s = cuda_time(lambda: model(tok[:, None], cache=cache, logits_to_keep=1), 5)
    print(f"{label}: eager {s*1e3:.2f} ms/step ({B/s:.0f} tok/s)", flush=True)


with torch.no_grad():
    eager("eager first")
    graph(False, "plain graph")
    graph(True, "compiled graph (1st)")
    eager("eager after compile")
    graph(True, "compiled graph (2nd decoder)")
    graph(False, "plain graph again")
