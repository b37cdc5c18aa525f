"""A decoder's static cache (gigabytes on a GPU) is freed as soon as the decoder is dropped: nothing in it refers
back to itself, so it does not wait for Python's cycle collector."""

import gc
import weakref

import torch
from helpers import randomized, small_config

from hymba import HymbaForCausalLM
from hymba.engine.cuda_graph import StaticDecoder


def test_the_cache_goes_with_the_decoder():
    model = randomized(HymbaForCausalLM(small_config())).eval()
    StaticDecoder(model, 2, 16)  # the first one imports torch.compile's machinery (which keeps a few frames)
    gc.collect()
    gc.disable()
    try:
        decoder = StaticDecoder(model, 2, 16)
        cache = weakref.ref(decoder.cache)
        decoder.prefill(torch.ones(2, 3, dtype=torch.long))
        decoder.step(torch.ones(2, dtype=torch.long))
        del decoder
        assert cache() is None
    finally:
        gc.enable()
