"""HymbaModel and HymbaForCausalLM, readable top to bottom:

    input_ids -> embed, prepend meta tokens -> for each layer: x + mixer(norm(x)); h + mlp(norm(h))
              -> final norm -> drop the meta positions -> lm_head (fp32 logits)

Layers of a K/V group attend with the K/V of the group's first layer (passed along, never recomputed).
An optional cache (`cache.HybridCache`) is threaded through; the modules themselves hold no state.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..checkpoint import load_pretrained, save_pretrained
from ..config import HymbaConfig
from ..errors import InputError
from ..ops import Kernels, get_kernels
from .cache import HybridCache
from .layers import Experts, RMSNorm, RotaryEmbedding
from .loss import linear_cross_entropy, pad_vocab_for_matmul
from .mixer import ForwardContext, HymbaMixer


class HymbaDecoderLayer(nn.Module):
    def __init__(self, config: HymbaConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mamba = HymbaMixer(config, layer_idx)
        if config.intermediate_size > 0:
            self.pre_moe_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.moe = Experts(config)

    def forward(self, x: torch.Tensor, ctx: ForwardContext, shared_kv=None):
        mixed, kv = self.mamba(self.input_layernorm(x), ctx, shared_kv)
        h = x + mixed
        if hasattr(self, "moe"):
            h = h + self.moe(self.pre_moe_layernorm(h))
        return h, kv


class HymbaModel(nn.Module):
    """The decoder stack. Returns final-normed hidden states of the text positions only."""

    def __init__(self, config: HymbaConfig):
        super().__init__()
        self.config = config
        # as in the release, the pad token's embedding row gets no gradient from the lookup (padding_idx)
        pad = config.pad_token_id
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         padding_idx=pad if pad is not None and 0 <= pad < config.vocab_size else None)
        if config.num_memory_tokens > 0:
            self.memory_tokens = nn.Parameter(torch.empty(config.num_memory_tokens, config.hidden_size))
        self.layers = nn.ModuleList([HymbaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.final_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config) if config.use_attention and config.rope else None
        self.gradient_checkpointing = False
        self._kernels_choice: str | Kernels = "auto"
        self._traceable_kernels = False
        self._kernels: dict[str, Kernels] = {}

    # ---- kernels --------------------------------------------------------------------------------------------
    def set_kernels(self, choice: str | Kernels, traceable: bool | None = None) -> None:
        """"auto" (default: the fastest available for the device), "reference", or a registered name.
        traceable: "auto" picks among kernels torch.compile traces without graph breaks (compile_layers
        sets it); None keeps the current setting."""
        self._kernels_choice = choice
        if traceable is not None:
            self._traceable_kernels = traceable
        self._kernels = {}

    def kernels_for(self, device: torch.device) -> Kernels:
        key = str(device)
        if key not in self._kernels:
            self._kernels[key] = get_kernels(self._kernels_choice, device,
                                             traceable=self._traceable_kernels)
        return self._kernels[key]

    # ---- forward --------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                cache=None, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids [B, L] (or inputs_embeds [B, L, d]); attention_mask [B, L], 1 = token, 0 = padding (any
        pattern). Without a cache the meta tokens are prepended here; a cache already holds them."""
        if inputs_embeds is None:
            if input_ids is None:
                raise InputError("pass input_ids or inputs_embeds")
            self._check_ids(input_ids)
            inputs_embeds = self.embed_tokens(input_ids)
        B, L, _ = inputs_embeds.shape
        device = inputs_embeds.device
        if cache is None and L > self.config.max_position_embeddings:  # (a cache's capacity bounds the rest)
            raise InputError(f"{L} text positions, more than the model's max_position_embeddings "
                             f"({self.config.max_position_embeddings}); shorten the input")
        if attention_mask is not None:
            if attention_mask.shape != (B, L):
                raise InputError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                                 f"expected {(B, L)} like the input")
            if attention_mask.dtype != torch.bool and not _tracing():
                odd = attention_mask[(attention_mask != 0) & (attention_mask != 1)]
                if odd.numel():
                    raise InputError(f"attention_mask must hold 0 (padding) and 1 (token), got {odd[0].item()}")
            attention_mask = attention_mask.to(device=device, dtype=torch.bool)
            if bool(attention_mask.all()):
                attention_mask = None

        M = self.config.num_memory_tokens
        if cache is None:
            x = inputs_embeds
            if M > 0:
                x = torch.cat([self.memory_tokens.to(x.dtype)[None].expand(B, -1, -1), x], dim=1)
            valid = None
            if attention_mask is not None:
                valid = torch.cat([attention_mask.new_ones(B, M), attention_mask], dim=1)
            start = torch.zeros(B, dtype=torch.long, device=device)
        else:
            x, valid, start = inputs_embeds, attention_mask, cache.next_position
        positions = _positions(start, valid, x.shape[1], device)
        hidden = self.run_layers(x, positions, valid, cache)
        hidden = self.final_layernorm(hidden)
        return hidden[:, M:] if cache is None else hidden

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise InputError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
        if input_ids.numel() and not _tracing():  # (a host sync; CUDA graphs and compiled steps skip it)
            low, high = torch.stack(torch.aminmax(input_ids)).tolist()  # one pass, one read back
            if low < 0 or high >= self.config.vocab_size:
                raise InputError(f"input_ids hold token ids outside the vocabulary [0, {self.config.vocab_size}): "
                                 f"min {low}, max {high}")

    def run_layers(self, x: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor | None, cache=None):
        """The layer stack on embeddings x [B, T, d] at `positions`; advances `cache` by T if given."""
        ctx = self._context(x, positions, valid, cache)
        kv_of: dict[int, tuple] = {}
        for i, layer in enumerate(self.layers):
            producer = self.config.kv_producer(i)
            shared = kv_of.get(producer) if producer != i else None
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x, kv = checkpoint(layer, x, ctx, shared, use_reentrant=False)
            else:
                x, kv = layer(x, ctx, shared)
            if kv is not None and producer == i:
                kv_of[i] = kv
        if cache is not None:
            n_valid = valid.sum(1) if valid is not None else x.shape[1]
            cache.end_chunk(x.shape[1], n_valid)
        return x

    def _context(self, x, positions, valid, cache) -> ForwardContext:
        c = self.config
        kernels = self.kernels_for(x.device)
        cos = sin = None
        if self.rotary is not None:
            cos, sin = self.rotary(positions, x.dtype)
        masks = {}
        if c.use_attention:
            key_positions = cache.begin_chunk(positions) if cache is not None else None
            for is_global in {c.is_global(i) for i in range(c.num_hidden_layers)}:
                k_pos = positions if cache is None else key_positions[is_global]
                window = None if is_global else c.sliding_window
                masks[is_global] = kernels.build_attention_mask(positions, k_pos, window, c.num_memory_tokens,
                                                                dtype=x.dtype)
        elif cache is not None:
            cache.begin_chunk(positions)
        ctx = ForwardContext(kernels, positions, valid, cos, sin, masks, cache)
        if valid is not None and c.use_ssm:
            B = x.shape[0]
            flags = torch.cat([valid.new_ones(B, c.mamba_d_conv - 1), valid], dim=1).to(torch.int8)
            ctx.conv_order = torch.argsort(flags, dim=1, stable=True)  # pads first, order otherwise kept
            ctx.conv_inverse = torch.argsort(ctx.conv_order, dim=1)
        return ctx

    # ---- the shared meta-token prefix ------------------------------------------------------------------------
    def meta_prefix(self):
        """A batch-1 cache holding the meta tokens' K/V and the conv/SSM states after them: the same for every
        request, so it is computed once per (weights, device, dtype) and reused."""
        p = self.embed_tokens.weight
        key = (p.device, p.dtype, _weights_version(self))
        cached = getattr(self, "_meta_prefix", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        M = self.config.num_memory_tokens
        prefix = HybridCache(self.config, 1, 0, device=p.device, dtype=p.dtype)
        if M > 0:
            with torch.no_grad():
                x = self.memory_tokens.to(p.dtype)[None]
                positions = torch.arange(M, device=p.device)[None]
                self.run_layers(x, positions, None, prefix)
        self._meta_prefix = (key, prefix)
        return prefix


def _tracing() -> bool:
    """Inside a CUDA graph capture or a torch.compile trace, where reading a value back to the host cannot be."""
    return torch.compiler.is_compiling() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())


def _positions(start: torch.Tensor, valid: torch.Tensor | None, T: int, device) -> torch.Tensor:
    """Position of each token: start + number of real tokens before it; -1 for padding."""
    if valid is None:
        return start[:, None] + torch.arange(T, device=device)[None]
    before = torch.cumsum(valid.long(), dim=1) - 1
    return torch.where(valid, start[:, None] + before, torch.full_like(before, -1))


def compile_layers(module: nn.Module) -> int:
    """torch.compile every decoder layer inside `module` (a model, or a wrapper around one, e.g. peft's), in
    place; returns how many. Per layer rather than the whole model: the layers of one kind share a compiled
    graph, and the model-level glue (cache, masks, meta tokens) stays eager. Returns the number compiled."""
    for model in module.modules():
        if isinstance(model, HymbaModel):  # "auto" then prefers kernels without graph breaks (our conv)
            model.set_kernels(model._kernels_choice, traceable=True)
    layers = [m for m in module.modules() if isinstance(m, HymbaDecoderLayer)]
    for layer in layers:
        layer.compile()
    return len(layers)


def _weights_version(module: nn.Module) -> int:
    """Changes whenever any parameter is modified in place (optimizer steps, load_state_dict)."""
    return sum(p._version for p in module.parameters())


@dataclass
class CausalLMOutput:
    logits: torch.Tensor | None  # [B, L, vocab] fp32 (L = logits_to_keep when given); None: return_logits=False
    loss: torch.Tensor | None = None


LOSS_REDUCTIONS = ("mean", "sum", "none")


class HymbaForCausalLM(nn.Module):
    def __init__(self, config: HymbaConfig, init: bool = True):
        super().__init__()
        self.config = config
        self.model = HymbaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if init and self.lm_head.weight.device.type != "meta":
            self.init_weights()

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache=None, inputs_embeds: torch.Tensor | None = None,
                logits_to_keep: int = 0, *, loss_reduction: str = "mean", label_shift: int = 1,
                return_logits: bool = True) -> CausalLMOutput:
        """`labels` [B, L]: next-token cross entropy, ignoring labels == -100. With label_shift 1 (the
        transformers convention) position t is scored against labels[t + 1]; with 0, against labels[t].
        `loss_reduction`: "mean" over the scored labels, "sum", or "none" (per position, [B, L - label_shift]).
        `return_logits=False` (with labels): the loss straight from the hidden states (`linear_cross_entropy`),
        never holding the logits, which are then None: the training tasks' memory-lean path.
        `logits_to_keep` > 0 computes logits for the last that many positions only (decoding)."""
        if loss_reduction not in LOSS_REDUCTIONS or label_shift not in (0, 1):
            raise ValueError(f"loss_reduction must be one of {LOSS_REDUCTIONS} and label_shift 0 or 1, got "
                             f"{loss_reduction!r} and {label_shift!r}")
        hidden = self.model(input_ids, attention_mask, cache=cache, inputs_embeds=inputs_embeds)
        if logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        if labels is not None and labels.shape != hidden.shape[:2]:
            raise ValueError(f"labels have shape {tuple(labels.shape)}, expected {tuple(hidden.shape[:2])}")
        lean = labels is not None and not return_logits and type(self.lm_head) is nn.Linear  # (wrapped: as is)
        logits = None if lean else self._lm_head(hidden)
        if logits is not None:
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 (float64 stays)
        loss = None
        if labels is not None:
            B, L = labels.shape
            targets = labels[:, label_shift:].to(hidden.device)
            if lean:
                scored = hidden[:, :L - label_shift].reshape(-1, hidden.shape[-1])
                per_token = linear_cross_entropy(scored, self.lm_head.weight, targets.reshape(-1))
            else:
                per_token = F.cross_entropy(logits[:, :L - label_shift].reshape(-1, logits.shape[-1]),
                                            targets.reshape(-1), ignore_index=-100, reduction="none")
            per_token = per_token.view(B, L - label_shift)
            if loss_reduction == "none":
                loss = per_token
            elif loss_reduction == "sum":
                loss = per_token.sum()
            else:
                loss = per_token.sum() / (targets != -100).sum()
        return CausalLMOutput(logits=logits, loss=loss)

    def _lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head(hidden), through a vocabulary padded for the matmul on CUDA (`pad_vocab_for_matmul`)."""
        if type(self.lm_head) is not nn.Linear:  # a wrapped head (LoRA): as is
            return self.lm_head(hidden)
        weight = self.lm_head.weight
        return F.linear(hidden, pad_vocab_for_matmul(weight, hidden))[..., :weight.shape[0]]

    # ---- conveniences -----------------------------------------------------------------------------------------
    def set_kernels(self, choice: str | Kernels) -> "HymbaForCausalLM":
        self.model.set_kernels(choice)
        return self

    def gradient_checkpointing_enable(self, enable: bool = True) -> None:
        self.model.gradient_checkpointing = enable

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        seen, total = set(), 0
        for name, p in self.named_parameters():
            if id(p) in seen or (exclude_embeddings and ("embed_tokens" in name or "lm_head" in name)):
                continue
            seen.add(id(p))
            total += p.numel()
        return total

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @torch.no_grad()
    def init_weights(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        """Initialization for training from scratch: `init_module` on every module, children before their
        parents (a mixer's SSM set-up, the dt bias included, comes after its projections' generic init), the
        tied head skipped (its weight is the embedding's, pad row zeroed)."""
        std = self.config.initializer_range

        def init(module: nn.Module) -> None:
            if not (module is self.lm_head and self.config.tie_word_embeddings):
                init_module(module, std, dt_min, dt_max, dt_init_floor)

        self.apply(init)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | str | None = "auto",
                        device: torch.device | str = "cpu", kernels: str = "auto",
                        check_finite: bool = True) -> "HymbaForCausalLM":
        """A released-format checkpoint directory; `check_finite=False` skips the NaN/inf scan of the weights
        (a pass over every tensor) for huge models."""
        return load_pretrained(cls, path, dtype=dtype, device=device, kernels=kernels, check_finite=check_finite)

    def save_pretrained(self, path: str | os.PathLike, max_shard_size: int | str = "5GB") -> None:
        save_pretrained(self, path, max_shard_size=max_shard_size)


@torch.no_grad()
def init_module(module: nn.Module, std: float, dt_min: float = 1e-3, dt_max: float = 0.1,
                dt_init_floor: float = 1e-4) -> None:
    """Initialize one module's own parameters (not its children's) for training from scratch; shared by
    `HymbaForCausalLM.init_weights` and the transformers model, which initializes module by module.

    Linear and embedding weights N(0, std), biases 0, norms 1, meta tokens N(0, std); SSM: A_log = log(1..N)
    per channel (S4D-real), D = 1, and the dt bias set to softplus^-1 of dt drawn log-uniformly in
    [dt_min, dt_max] (as Mamba does), so every channel starts with a useful time scale.
    """
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    elif isinstance(module, RMSNorm):
        nn.init.ones_(module.weight)
    elif isinstance(module, nn.Conv1d):
        module.reset_parameters()
    elif isinstance(module, HymbaMixer) and module.use_ssm:
        N = module.d_state
        module.A_log[0].copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).expand(module.d_inner, N))
        module.D[0].fill_(1.0)
        dt = torch.exp(torch.rand(module.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        module.dt_proj[0].bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    elif isinstance(module, HymbaModel) and module.config.num_memory_tokens > 0:
        nn.init.normal_(module.memory_tokens, std=std)
