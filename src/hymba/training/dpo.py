"""Direct preference optimization (Rafailov et al., 2023) against a frozen reference model.

Each JSONL line holds `prompt`, `chosen` and `rejected`. A prompt that is a list of chat messages is rendered
with the chat template and each response becomes the final assistant turn (only its tokens are scored); a
prompt that is a string is used as raw text, followed by the response and EOS.

For a pair, with log-probabilities summed over the response tokens,
    m = (log pi(chosen) - log pi(rejected)) - (log ref(chosen) - log ref(rejected))
    loss = -(1 - eps) * log sigmoid(beta * m) - eps * log sigmoid(-beta * m)      (eps: dpo.label_smoothing)
The reference is `dpo.reference` if given, else the starting model: with LoRA, the same network with its
adapters switched off (no second copy); without, a frozen copy taken before training.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling import HymbaForCausalLM
from . import distributed as D
from .config import TrainConfig
from .data import DataError
from .lora import adapters_disabled
from .sft import IGNORE, ChatDataTask, check_messages, tokenize_chat
from .task import Batch, TrainingError

Example = tuple[list[int], list[int]]  # (ids, labels)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and the implicit reward margins beta * m (inputs: summed log-probs per pair)."""
    margin = beta * ((policy_chosen - policy_rejected) - (ref_chosen - ref_rejected))
    loss = -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)
    return loss, margin


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over positions of log p(labels[t] | < t), where labels != -100: [B, L, V], [B, L] -> [B]."""
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                          ignore_index=IGNORE, reduction="none")
    return -nll.view(labels.shape[0], -1).sum(-1)


def model_sequence_logps(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`sequence_logps` of `model`'s predictions, through its memory-lean loss path (no [B, L, V] logits)."""
    nll = model(ids, attention_mask=mask, labels=labels, loss_reduction="none", return_logits=False).loss
    return -nll.sum(-1)


def _response_text(value: Any, where: str, field: str) -> str:
    if isinstance(value, str):
        return value
    if (isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict)
            and value[0].get("role") == "assistant" and isinstance(value[0].get("content"), str)):
        return value[0]["content"]
    raise DataError(f"{where}: '{field}' must be a string or a list holding one assistant message")


def tokenize_pair(tokenizer, record: dict[str, Any], where: str) -> tuple[Example, Example]:
    prompt = record["prompt"]
    out = []
    for field in ("chosen", "rejected"):
        response = _response_text(record[field], where, field)
        if isinstance(prompt, list):
            messages = check_messages(prompt, where) + [{"role": "assistant", "content": response}]
            out.append(tokenize_chat(tokenizer, messages, "auto", only_last=True))
        elif isinstance(prompt, str):
            head = tokenizer.encode(prompt, add_special_tokens=True)
            tail = tokenizer.encode(response, add_special_tokens=False) + [tokenizer.eos_token_id]
            out.append((head + tail, [IGNORE] * len(head) + tail))
        else:
            raise DataError(f"{where}: 'prompt' must be a string or a list of chat messages")
    return out[0], out[1]


class DPOTask(ChatDataTask):
    name = "dpo"
    fields = ("prompt", "chosen", "rejected")
    unit = "pair"
    data_help = 'a JSONL file of {"prompt", "chosen", "rejected"} pairs'

    def __init__(self) -> None:
        super().__init__()
        self.reference: nn.Module | None = None

    def tokenize(self, record, where, cfg):
        chosen, rejected = tokenize_pair(self.tokenizer, record, where)
        return (chosen, rejected), max(len(chosen[0]), len(rejected[0]))

    def load_tokenizer(self, cfg: TrainConfig) -> None:
        super().load_tokenizer(cfg)
        if self.tokenizer.eos_token_id is None:
            raise TrainingError(f"tokenizer {self.tokenizer_dir} has no eos_token: responses could not be ended")

    def prepare(self, cfg: TrainConfig, info: D.DistInfo) -> None:
        super().prepare(cfg, info)
        self.beta, self.label_smoothing = cfg.dpo.beta, cfg.dpo.label_smoothing

    def attach(self, model: nn.Module, cfg: TrainConfig, info: D.DistInfo) -> None:
        """Fix the reference before training starts."""
        if cfg.dpo.reference:
            self.reference = HymbaForCausalLM.from_pretrained(cfg.dpo.reference, dtype=torch.float32,
                                                              device=info.device)
        elif cfg.lora.enabled:
            self.reference = None  # the policy with adapters off
        else:
            self.reference = copy.deepcopy(model)
        if self.reference is not None:
            self.reference.eval().requires_grad_(False)
            if self.reference.config.vocab_size != model.config.vocab_size:
                raise TrainingError("the DPO reference and the policy have different vocabularies")

    def collate(self, pairs: list[tuple[Example, Example]]) -> Batch:
        rows = [p[0] for p in pairs] + [p[1] for p in pairs]
        width = max(len(r[0]) for r in rows)
        n = len(pairs)
        ids = torch.full((2 * n, width), self.pad_id, dtype=torch.long)
        labels = torch.full((2 * n, width), IGNORE, dtype=torch.long)
        mask = torch.zeros((2 * n, width), dtype=torch.long)
        for i, (r_ids, r_labels) in enumerate(rows):
            ids[i, :len(r_ids)] = torch.tensor(r_ids)
            labels[i, :len(r_labels)] = torch.tensor(r_labels)
            mask[i, :len(r_ids)] = 1
        # [pairs, 2 (chosen, rejected), width]: micro-batches split by pair
        shape = lambda t: t.view(2, n, width).transpose(0, 1).contiguous()  # noqa: E731
        return {"input_ids": shape(ids), "attention_mask": shape(mask), "labels": shape(labels)}

    def count(self, batch: Batch) -> int:
        return int(batch["input_ids"].shape[0])

    def _reference_logps(self, model: nn.Module, ids, mask, labels) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                return model_sequence_logps(self.reference, ids, mask, labels)

            inner = D.unwrap(model)
            with adapters_disabled(inner):
                return model_sequence_logps(inner, ids, mask, labels)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n, _, width = batch["input_ids"].shape
        flat = {k: v.transpose(0, 1).reshape(2 * n, width).to(self.device) for k, v in batch.items()}
        ids, mask, labels = flat["input_ids"], flat["attention_mask"], flat["labels"]
        policy = model_sequence_logps(model, ids, mask, labels)
        ref = self._reference_logps(model, ids, mask, labels)
        losses, margin = dpo_loss(policy[:n], policy[n:], ref[:n], ref[n:], self.beta, self.label_smoothing)
        chosen_reward = self.beta * (policy[:n] - ref[:n]).detach()
        rejected_reward = self.beta * (policy[n:] - ref[n:]).detach()
        return losses.sum(), {"accuracy": (margin > 0).float().sum(), "margin": margin.detach().sum(),
                              "chosen_reward": chosen_reward.sum(), "rejected_reward": rejected_reward.sum()}
