"""HymbaHFForCausalLM: a transformers `PreTrainedModel` + `GenerationMixin` on the package's own Hymba modules.

One model implementation: the backbone `HymbaHFModel` is the package's `HymbaModel` (embeddings, meta tokens,
decoder layers, final norm; a subclass that only changes the calling convention) and the head is the same
`lm_head`, under the release's tensor names, so `from_pretrained` reads the released layout directly and
`save_pretrained` writes it (through the package's own checkpoint writer). What is added is the transformers
surface: `generate` (with `HymbaCache` as its cache), pipelines, the Trainer's loss conventions, gradient
checkpointing, peft and TRL. `to_hymba()` hands the same modules to the package's HymbaForCausalLM.

    import hymba  # registers model_type "hymba" with AutoConfig / AutoModelForCausalLM / AutoTokenizer
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained("path/to/Hymba-1.5B-Base", dtype="auto")
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

from ..checkpoint import CheckpointError
from ..checkpoint import save_pretrained as save_released_layout
from ..errors import InputError
from ..modeling import HymbaForCausalLM, HymbaModel
from ..modeling.layers import RotaryEmbedding, rope_inv_freq
from ..modeling.loss import pad_vocab_for_matmul
from ..modeling.model import init_module
from .cache import HymbaCache
from .configuration import HymbaHFConfig


class HymbaHFModel(HymbaModel):
    """The package's HymbaModel (same modules, same computation) called the way transformers calls a decoder
    backbone: keyword arguments, a HymbaCache, and a `BaseModelOutputWithPast` back. TRL's fused LM head runs
    it directly (`model.base_model`) and applies the lm_head itself."""

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: HymbaCache | None = None, inputs_embeds: torch.Tensor | None = None,
                use_cache: bool | None = None, **kwargs) -> BaseModelOutputWithPast:
        """Final-normed hidden states of the text positions, and the cache when `use_cache` (a HymbaCache, made
        here if none is passed; a plain forward keeps no state unless given one).

        attention_mask [B, L] (1 token, 0 padding, any pattern); with a cache that already holds tokens it may
        also cover them ([B, past + L], as `generate` passes it). Positions come from the mask (meta tokens
        first), so `position_ids`, if passed, must be the ones the mask implies. Other keyword arguments are
        ignored, as transformers' models do (`generate` and the Trainer pass some of theirs along), except
        requests this model cannot honour (attention weights, per-layer hidden states)."""
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        for key in ("output_attentions", "output_hidden_states"):
            if kwargs.get(key):
                raise InputError(f"{key}=True is not supported: Hymba's layers return neither attention weights "
                                 "nor per-layer hidden states")
        use_cache = bool(use_cache) or cache is not None  # (a cache given is used: its tokens come first)
        if cache is not None and not isinstance(cache, HymbaCache):
            raise InputError(f"Hymba decodes with a HymbaCache (global K/V, window rings with the meta tokens, conv "
                             f"and SSM state), got a {type(cache).__name__}; pass cache=None and let the model make "
                             "one")
        if attention_mask is not None and attention_mask.dim() != 2:
            raise InputError(f"attention_mask must be [batch, length] (1 token, 0 padding), got shape "
                             f"{tuple(attention_mask.shape)}; Hymba builds its own attention masks")
        ref = input_ids if input_ids is not None else inputs_embeds
        if ref is None:
            raise InputError("pass input_ids or inputs_embeds")
        B, L = ref.shape[:2]
        state = None
        if use_cache:
            cache = cache if cache is not None else HymbaCache(self.config)
            past = cache.get_seq_length()
            if attention_mask is not None and attention_mask.shape[1] != L:
                if attention_mask.shape[1] != past + L:
                    raise InputError(f"attention_mask covers {attention_mask.shape[1]} tokens; expected the {L} new "
                                     f"ones, or the {past} in the cache and the {L} new ones")
                attention_mask = attention_mask[:, past:]
        if kwargs.get("position_ids") is not None:
            _check_positions(kwargs["position_ids"], attention_mask, L, cache if use_cache else None)
        if use_cache:
            state = cache.prepare(self, B, L)
        hidden = super().forward(input_ids, attention_mask, cache=state, inputs_embeds=inputs_embeds)
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=cache if use_cache else None)

    def plain(self) -> HymbaModel:
        """A plain HymbaModel on these very modules and parameters (no copy), for the package's own classes."""
        with torch.device("meta"):
            model = HymbaModel(self.config)
        for name, child in self.named_children():
            setattr(model, name, child)
        for name, param in self.named_parameters(recurse=False):
            setattr(model, name, param)
        model.gradient_checkpointing = self.gradient_checkpointing
        model.set_kernels(self._kernels_choice, self._traceable_kernels)
        return model


class HymbaHFForCausalLM(PreTrainedModel, GenerationMixin):
    """Hymba for transformers: the package's HymbaModel + lm_head, with transformers' loading, saving and
    generation. `to_hymba()` gives the package's HymbaForCausalLM on the same modules (no copy)."""

    config_class = HymbaHFConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["HymbaDecoderLayer"]
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    # Consumer layers of a K/V group never compute k, so the release's k_norm weights there go unused.
    _keys_to_ignore_on_load_unexpected = [r"model\.layers\.\d+\.mamba\.self_attn\.k_norm\.weight"]
    _supports_sdpa = False
    _supports_flash_attn = False
    _supports_flex_attn = False

    def __init__(self, config: HymbaHFConfig):
        """The package's modules for `config` (its HymbaConfig: `config.to_hymba()`), lm_head tied as configured."""
        super().__init__(config)
        self.hymba_config = config.to_hymba()
        self.model = HymbaHFModel(self.hymba_config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.post_init()
        self._decode_with_cache()

    def _decode_with_cache(self) -> None:
        """The release's config.json says use_cache: false (NVIDIA's cached decoding drifts from its full forward,
        see the format document, section 7), and a generation config derived from it (`_from_model_config`) would
        make `generate` recompute the whole sequence at every step. Hymba's cache is exact, so such a derived
        setting is turned back to caching; a generation config written with use_cache false is kept."""
        config = getattr(self, "generation_config", None)
        if config is not None and config.use_cache is False and getattr(config, "_from_model_config", False):
            config.use_cache = True

    def adjust_generation_fn(self, *args, **kwargs):
        """transformers' hook that loads generation_config.json after from_pretrained; then `_decode_with_cache`."""
        result = super().adjust_generation_fn(*args, **kwargs)
        self._decode_with_cache()
        return result

    # ---- transformers hooks ----------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize_weights(self) -> None:
        """transformers calls this on a model built from a config (nothing loaded: the package's own
        initialization, `HymbaForCausalLM.init_weights`, exactly) and after loading a checkpoint (to fill what it
        lacked: a Hymba checkpoint must hold every tensor, as the package's loader requires). The rotary
        frequencies, which no file holds, are computed from the config either way."""
        params = dict(self.named_parameters())
        loaded = {name for name, p in params.items() if getattr(p, "_is_hf_initialized", False)}
        if not loaded:
            self.to_hymba().init_weights()
        elif len(loaded) < len(params):
            missing = sorted(set(params) - loaded)
            raise CheckpointError(f"the checkpoint does not hold {', '.join(missing[:10])}"
                                  f"{f' and {len(missing) - 10} more' if len(missing) > 10 else ''}")
        self._init_weights(self.model.rotary)

    def _init_weights(self, module: nn.Module | None) -> None:
        """One module's own parameters, as the package initializes them (transformers calls this for the rows a
        `resize_token_embeddings` adds); for the rotary embedding, its frequencies from the config."""
        if isinstance(module, RotaryEmbedding):
            module.inv_freq.copy_(rope_inv_freq(module.config).to(module.inv_freq.device))
        elif module is not None:
            init_module(module, self.hymba_config.initializer_range)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """`generate` must not make a DynamicCache: the model makes its own HymbaCache on the first forward."""
        return False

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding (model.embed_tokens)."""
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the token embedding (transformers' resize does)."""
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        """The lm_head (tied to the embedding when tie_word_embeddings)."""
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        """Replace the lm_head (transformers' resize does)."""
        self.lm_head = value

    def get_decoder(self) -> HymbaHFModel:
        """The backbone: the package's HymbaModel, called the transformers way."""
        return self.model

    def resize_token_embeddings(self, *args, **kwargs):
        """transformers' resize (e.g. after adding special tokens); the model's own config follows, since the
        model checks token ids against its vocab_size."""
        result = super().resize_token_embeddings(*args, **kwargs)
        self.hymba_config = self.model.config = self.config.to_hymba()
        return result

    # ---- forward ---------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                cache: HymbaCache | None = None, inputs_embeds: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, use_cache: bool | None = None,
                logits_to_keep: int | torch.Tensor = 0, **kwargs) -> CausalLMOutputWithPast | tuple:
        """transformers' causal-LM forward: float32 (or float64) logits of the text positions (the last `logits_to_keep`, 0:
        all), the loss when `labels` are given (next-token cross entropy, -100 ignored, `num_items_in_batch` as
        the Trainer passes it), and the cache when `use_cache`. Inputs as `HymbaHFModel.forward` takes them."""
        out = self.model(input_ids, attention_mask, cache=cache, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         **kwargs)
        logits = self._lm_head(slice_logits_to_keep(out.last_hidden_state, logits_to_keep))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 (a float64 model: float64)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=logits.shape[-1],
                                      num_items_in_batch=kwargs.get("num_items_in_batch"))
        result = CausalLMOutputWithPast(loss=loss, logits=logits, cache=out.cache)
        return result if kwargs.get("return_dict") is not False else result.to_tuple()

    def _lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head(hidden) as HymbaForCausalLM computes it (vocabulary padded for the matmul on CUDA)."""
        if type(self.lm_head) is not nn.Linear:  # a wrapped head (LoRA): as is
            return self.lm_head(hidden)
        weight = self.lm_head.weight
        return F.linear(hidden, pad_vocab_for_matmul(weight, hidden))[..., :weight.shape[0]]

    # ---- the package's model and file layout -----------------------------------------------------------------
    def to_hymba(self) -> HymbaForCausalLM:
        """The package's HymbaForCausalLM on these very modules (no copy), for hymba's engine, CLI and evaluation
        (e.g. after fine-tuning here)."""
        with torch.device("meta"):
            model = HymbaForCausalLM(self.hymba_config, init=False)
        model.model, model.lm_head = self.model.plain(), self.lm_head
        return model.train(self.training)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,
                        state_dict: dict[str, torch.Tensor] | None = None, max_shard_size: int | str = "5GB",
                        push_to_hub: bool = False, **kwargs) -> None:
        """Write the released layout (config.json with every official key, generation_config.json, safetensors
        weights under the release's names, tied embeddings stored once) with the package's checkpoint writer.
        `state_dict` replaces the model's own (as the Trainer passes it); pushing to the Hub is not done here
        (save, then upload the directory with huggingface_hub)."""
        if push_to_hub:
            raise InputError("push_to_hub is not supported here: save_pretrained(dir), then upload dir with "
                             "huggingface_hub's upload_folder")
        if not is_main_process:
            return
        state = state_dict if state_dict is not None else self.state_dict()
        # the config as it reads now (token ids and other settings may have changed since loading)
        view = SimpleNamespace(config=self.config.to_hymba(), dtype=self.dtype, state_dict=lambda: state)
        save_released_layout(view, save_directory, max_shard_size=max_shard_size)


def _check_positions(position_ids: torch.Tensor, attention_mask, L: int, cache: HymbaCache | None) -> None:
    """position_ids are accepted when they say what the mask already does (0, 1, ... over each row's real
    tokens, continuing from the cache); anything else (packed sequences) is refused by name."""
    past = cache.get_seq_length() if cache is not None else 0
    rows = attention_mask.shape[0] if attention_mask is not None else position_ids.shape[0]
    if position_ids.dim() != 2 or position_ids.shape[1] != L or position_ids.shape[0] not in (1, rows):
        raise InputError(f"position_ids has shape {tuple(position_ids.shape)}, expected [batch, {L}]")
    if attention_mask is None:
        mask = torch.ones(rows, L, dtype=torch.long, device=position_ids.device)
    else:
        mask = attention_mask.to(device=position_ids.device, dtype=torch.long)
    start = 0
    if cache is not None and cache.state is not None:
        start = (cache.state.next_position - cache.state.num_meta).to(position_ids.device)[:, None]
    implied = start + mask.cumsum(1) - 1
    real = mask.bool()
    if not torch.equal(position_ids.expand_as(implied)[real], implied[real]):
        raise InputError("position_ids must follow the attention mask (0, 1, 2, ... over each row's tokens"
                         f"{', after the ' + str(past) + ' in the cache' if past else ''}): Hymba numbers "
                         "positions itself (meta tokens first), so packed sequences are not supported")
