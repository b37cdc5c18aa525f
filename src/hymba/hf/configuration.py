"""HymbaHFConfig: transformers' view of a Hymba config.json (model_type "hymba").

Its attributes are the keys of the released config.json; `to_hymba()` turns them into the package's
`HymbaConfig`, which validates them and from which the model is built. Read from a file (`from_pretrained`,
`from_dict`, AutoConfig), a key the file leaves out means what NVIDIA's config class makes of it, exactly as
`HymbaConfig.from_json` reads it; constructed directly (`HymbaHFConfig(hidden_size=...)`), absent keys take the
released Hymba-1.5B values, as transformers' config classes default to their flagship checkpoint.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from transformers import PreTrainedConfig

from ..config import OFFICIAL_DEFAULTS, HymbaConfig

# Keys transformers' base config owns (or interprets) rather than Hymba's architecture.
_TRANSFORMERS_KEYS = frozenset(PreTrainedConfig().to_dict()) | {"torch_dtype", "name_or_path", "num_labels"}
# Inert keys of the release (see INERT_KEYS) that tools built on transformers would misread, so they are not
# attributes here; on save the checkpoint writer writes the release's values back. "attn_implementation": "flex"
# names NVIDIA's attention kernel, not one of transformers' implementations (which would refuse it);
# "output_router_logits" and "router_aux_loss_coef" (from the Jamba config NVIDIA started from) would make TRL
# treat Hymba as a mixture of experts returning router logits.
_NOT_ATTRIBUTES = frozenset({"attn_implementation", "output_router_logits", "router_aux_loss_coef"})


class HymbaHFConfig(PreTrainedConfig):
    """The released config.json as a transformers config; validated by (and convertible to) `HymbaConfig`."""

    model_type = "hymba"
    # The release's auto_map names NVIDIA's remote code, which is not used (nor needed) here; tools that look for
    # it (TRL, to pick an Auto class) find none and use AutoModelForCausalLM, which the registration covers.
    auto_map = MappingProxyType({})

    def __init__(self, **kwargs: Any):
        """Hymba's keys (absent ones: the 1.5B release's values) validated by HymbaConfig and set as attributes;
        transformers' own keys (dtype, architectures, ...) go to its base class."""
        ours = {k: kwargs.pop(k) for k in list(kwargs) if k not in _TRANSFORMERS_KEYS}
        hymba = HymbaConfig.from_dict({**_released_keys(HymbaConfig()), **ours})
        for key, value in _released_keys(hymba).items():
            setattr(self, key, value)
        super().__init__(**kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> "HymbaHFConfig":
        """A config.json's content: keys it leaves out take the official config class's defaults."""
        absent = {k: v for k, v in OFFICIAL_DEFAULTS.items() if k not in config_dict}
        return super().from_dict({**absent, **config_dict}, **kwargs)

    def to_hymba(self) -> HymbaConfig:
        """The package's config for these attributes (validated: a bad value raises ConfigError naming it)."""
        ours = {k: v for k, v in vars(self).items() if not k.startswith("_") and k not in _TRANSFORMERS_KEYS}
        return HymbaConfig.from_dict(ours)


def _released_keys(config: HymbaConfig) -> dict[str, Any]:
    """`config.to_dict()` less the keys transformers' base config owns (model_type, architectures, dtype, ...)."""
    return {k: v for k, v in config.to_dict().items() if k not in _TRANSFORMERS_KEYS and k not in _NOT_ATTRIBUTES}
