"""The built-in demo: train a small Hymba from scratch on this machine, in minutes, on data every machine has.

1. corpus: the Python standard library's own `.py` files (tests excluded), one document per file, a share
   of the files held out for validation; a byte-level BPE tokenizer is trained on them (`hymba prepare`'s
   code path);
2. model: `demo.yaml`'s small Hymba (attention + SSM heads in every layer, meta tokens, global and sliding-window
   layers, K/V sharing), trained with the regular trainer for a fixed time budget, the WSD schedule laid out
   over the budget;
3. report: validation loss and perplexity against the unigram baseline, the decoding cache at 8k tokens
   against a transformer of the same size, and a sampled continuation of a code prompt.
Everything lands in the output folder: the checkpoint (`model/`), metrics.jsonl, loss.png, TensorBoard logs,
summary.json.
"""

from __future__ import annotations

import json
import math
import os
import sysconfig
import time
from importlib import resources
from typing import Any

import numpy as np
import torch

from ..config import BASELINES, HymbaConfig
from ..engine import generate
from ..modeling import HymbaForCausalLM
from ..modeling.cache import cache_bytes
from ..tokenizer import load_tokenizer
from ..utils import atomic_write_text
from .config import TrainConfig, _yaml
from .data import PackedDataset, open_shards, prepare_dataset, unigram_cross_entropy
from .distributed import DistInfo, resolve_device
from .metrics import read_metrics
from .task import even_shards
from .trainer import Trainer

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "turtledemo"}


def demo_settings() -> tuple[dict[str, Any], dict[str, Any]]:
    """(the demo's own settings, the training config as a dict) from the packaged demo.yaml."""
    yaml = _yaml()
    text = resources.files("hymba.training").joinpath("demo.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    return data.pop("demo"), data


def stdlib_sources() -> tuple[str, list[str]]:
    """The standard library's .py files that are valid UTF-8 (sorted; test suites and site-packages skipped)."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            try:
                with open(path, "rb") as f:
                    text = f.read().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if text.strip():
                files.append(path)
    if not files:
        raise RuntimeError(f"no Python source files found under {root} (sysconfig's stdlib path)")
    return root, files


def attention_only_twin(config, target_params: int):
    """A Llama-style transformer (the paper's attention-only baseline) as wide and deep as `config`, its MLP
    widened until it has about as many parameters."""
    def params(ffn: int) -> tuple[int, Any]:
        c = config.replace(**BASELINES["attention-only"], intermediate_size=ffn)
        with torch.device("meta"):
            return HymbaForCausalLM(c, init=False).num_parameters(), c

    lo, hi = config.intermediate_size, config.intermediate_size * 8
    while lo < hi:  # smallest MLP width reaching the target
        mid = (lo + hi) // 2
        if params(mid)[0] < target_params:
            lo = mid + 1
        else:
            hi = mid
    return params(lo)


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(out: str = "runs/demo", minutes: float | None = None, device: str = "auto", seed: int = 0,
             log=_say) -> dict[str, Any]:
    t_all = time.perf_counter()
    demo, cfg_dict = demo_settings()
    dev = resolve_device(device)
    cfg = TrainConfig.from_dict(cfg_dict, source="demo.yaml")
    if minutes is None:
        minutes = demo["minutes_cuda"] if dev.type == "cuda" else demo["minutes_cpu"]
    if minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {minutes}")
    if dev.type == "cuda":
        cfg.train.batch_size = demo["batch_size_cuda"]
    shown = out
    out = os.path.abspath(out)
    data_dir = os.path.join(out, "data")
    os.makedirs(out, exist_ok=True)

    # 1. corpus and tokenizer
    root, files = stdlib_sources()
    size = sum(os.path.getsize(f) for f in files)
    log(f"hymba demo: a small Hymba trained from scratch for {minutes:g} min on {dev.type}, on this machine's Python "
        f"standard library ({root})")
    log(f"[1/4] corpus: {len(files):,} .py files, {size / 1e6:.1f} MB; training a {demo['vocab_size']:,}-id "
        "byte-level BPE tokenizer and tokenizing")
    t0 = time.perf_counter()
    manifest = prepare_dataset(files, data_dir, demo["vocab_size"], val_fraction=demo["val_fraction"], seed=seed,
                               separator=None, overwrite=True,
                               tokenizer_sample_chars=int(demo["tokenizer_sample_mb"] * 1e6), log=lambda s: None)
    n_train, n_val = manifest["splits"]["train"]["tokens"], manifest["splits"]["val"]["tokens"]
    log(f"      {n_train:,} training and {n_val:,} validation tokens ({manifest['splits']['val']['documents']} files "
        f"held out), {size / (n_train + n_val):.2f} bytes/token, in {time.perf_counter() - t0:.0f}s")

    # 2. model and training
    cfg.data.path = data_dir
    cfg.train.out_dir = out
    cfg.train.device = str(dev)
    cfg.train.seed = seed
    cfg.train.time_budget_s = minutes * 60
    config = HymbaConfig.from_preset("tiny", **{**cfg.model.config, "vocab_size": manifest["vocab_size"],
                                                "bos_token_id": manifest["bos_token_id"],
                                                "eos_token_id": manifest["eos_token_id"],
                                                "pad_token_id": manifest["pad_token_id"]})
    with torch.device("meta"):
        n_params = HymbaForCausalLM(config, init=False).num_parameters()
    layers = config.num_hidden_layers
    log(f"[2/4] model: {n_params / 1e6:.2f}M parameters: {layers} layers of {config.hidden_size} wide, each with "
        f"{config.num_attention_heads} attention heads and SSM heads ({config.d_inner} channels, state "
        f"{config.mamba_d_state}) in parallel; {config.num_memory_tokens} meta tokens; global attention in layers "
        f"{config.global_attn_idx}, a {config.sliding_window}-token window elsewhere; K/V shared in "
        f"{config.kv_reuse_group}")
    log(f"      training: batch {cfg.train.batch_size} x {cfg.data.seq_len} tokens, AdamW (peak lr "
        f"{cfg.optim.lr:g}), {cfg.schedule.name.upper()} schedule over the {minutes:g}-minute budget")
    cfg.train.adaptive_threads = dev.type == "cpu"  # a shared CPU's free cores come and go
    trainer = Trainer(cfg, log_indent="      ")
    val = PackedDataset.from_prepared(data_dir, "val", cfg.data.seq_len)
    micro = cfg.train.micro_batch_size or cfg.train.batch_size
    eval_windows = [i for b in even_shards(len(val), micro, DistInfo(), cfg.train.eval_batches * cfg.train.batch_size)
                    for i in b]
    unigram = _unigram_on(open_shards(data_dir, "train"), val, eval_windows, manifest["vocab_size"])
    trainer.baselines = {f"unigram baseline ({unigram:.2f})": unigram}
    result = trainer.fit()

    # 3. the numbers
    model_dir = os.path.join(out, "model")  # the trainer's final model
    model = HymbaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, device=dev)
    val_loss = result.val_loss
    first = _first_loss(out)
    log(f"[3/4] results after {result.steps:,} steps, {result.tokens:,} tokens, {result.elapsed_s / 60:.1f} min "
        f"({result.tokens / max(result.elapsed_s, 1e-9):,.0f} tokens/s)")
    log(f"      validation loss {val_loss:.3f} nats/token, perplexity {math.exp(val_loss):.1f}  "
        f"(unigram baseline {unigram:.3f}, perplexity {math.exp(unigram):.0f}; uniform guess "
        f"{math.log(config.vocab_size):.2f}; training loss over the first {cfg.train.log_interval} steps {first:.2f})")
    seq = 8192
    hymba_cache = sum(cache_bytes(config, 1, seq, dtype=torch.float16).values())
    twin_params, twin = attention_only_twin(config, n_params)
    twin_cache = sum(cache_bytes(twin, 1, seq, dtype=torch.float16).values())
    log(f"      decoding cache at {seq:,} tokens (batch 1, fp16 K/V and conv state, fp32 SSM state): this Hymba "
        f"{hymba_cache / 1e6:.2f} MB vs {twin_cache / 1e6:.2f} MB for a same-size transformer "
        f"({twin_params / 1e6:.2f}M parameters, all layers global, no K/V sharing): {twin_cache / hymba_cache:.1f}x "
        "smaller")

    # 4. a sample
    tok = load_tokenizer(model_dir)
    prompt = demo["prompt"]
    ids = torch.tensor([tok.encode(prompt)], device=dev)
    with torch.no_grad():
        seqs = generate(model, ids, max_new_tokens=demo["sample_tokens"], min_new_tokens=demo["sample_tokens"],
                              do_sample=True, temperature=demo["temperature"], top_k=demo["top_k"], seed=seed,
                        engine=False)  # one sample: no engine to build for it
    continuation = tok.decode(seqs[0, ids.shape[1]:].tolist())
    log(f"[4/4] sampled continuation (temperature {demo['temperature']}, top-k {demo['top_k']}):")
    log("      " + "-" * 72)
    for line in (prompt + continuation).splitlines():
        log("      " + line)
    log("      " + "-" * 72)

    summary = {
        "minutes_budget": minutes, "device": str(dev), "threads_at_the_end": torch.get_num_threads(),
        "corpus": {"root": root, "files": len(files), "bytes": size, "train_tokens": n_train, "val_tokens": n_val},
        "model": {"parameters": n_params, "config": config.to_dict()},
        "training": {"steps": result.steps, "tokens": result.tokens, "seconds": result.elapsed_s,
                     "tokens_per_s": result.tokens / max(result.elapsed_s, 1e-9), "first_loss": first,
                     "final_train_loss": result.train_loss, "skipped_steps": result.skipped_steps},
        "validation": {"loss": val_loss, "perplexity": math.exp(val_loss), "unigram_loss": unigram,
                       "unigram_perplexity": math.exp(unigram), "tokens": len(eval_windows) * cfg.data.seq_len},
        "cache_8k": {"hymba_bytes": hymba_cache, "transformer_bytes": twin_cache, "transformer_parameters": twin_params,
                     "ratio": twin_cache / hymba_cache},
        "sample": {"prompt": prompt, "continuation": continuation},
        "wall_seconds": time.perf_counter() - t_all,
    }

    atomic_write_text(os.path.join(out, "summary.json"), json.dumps(summary, indent=2) + "\n")
    log(f"outputs in {shown}/: model/ (try: hymba generate --model {shown}/model --prompt 'import os'), loss.png, "
        f"metrics.jsonl, tensorboard/, summary.json; checkpoints/ resumes training. Total {summary['wall_seconds'] / 60:.1f} min.")
    return summary


def _unigram_on(train_shards, val, windows: list[int], vocab_size: int) -> float:
    """The unigram model's loss on exactly the validation targets the trainer scores."""
    targets = [val[i][1:] for i in windows] or [np.concatenate([np.asarray(s) for s in val.shards])]
    return unigram_cross_entropy(train_shards, targets, vocab_size)


def _first_loss(out: str) -> float:
    losses = [r["loss"] for r in read_metrics(out) if r.get("kind") == "train"]
    return losses[0] if losses else math.nan
