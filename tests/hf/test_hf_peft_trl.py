"""Fine-tuning with the tools people already use: peft LoRA on the transformers model, TRL's SFTTrainer and
DPOTrainer for a few steps on CPU with the loss going down, and the result saved in the released layout."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from hymba import HymbaForCausalLM

peft = pytest.importorskip("peft")
trl = pytest.importorskip("trl", reason="pip install 'hymba[hf]'")
datasets = pytest.importorskip("datasets")

LORA_TARGETS = ["in_proj", "out_proj", "gate_proj", "up_proj", "down_proj"]


def test_lora_trains_merges_and_saves_the_released_layout(hf_dir, hf_tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS,
                                                      task_type="CAUSAL_LM"))
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    batch = hf_tokenizer(["The quick brown fox jumps over the lazy dog."] * 2, return_tensors="pt")
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    torch.manual_seed(0)
    lora.train()
    losses = []
    for _ in range(6):
        loss = lora(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    lora.eval()
    with torch.no_grad():
        adapted = lora(**batch).logits
        generated = lora.generate(**hf_tokenizer("Hello", return_tensors="pt"), max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 6)
    merged = lora.merge_and_unload()
    merged.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", "model.safetensors"]
    with torch.no_grad():  # merged weights in the released layout give the adapted model's logits
        again = HymbaForCausalLM.from_pretrained(tmp_path)(**batch).logits
    torch.testing.assert_close(again, adapted, rtol=1e-4, atol=1e-4)


def _trl_args(cls, path, **extra):
    return cls(output_dir=str(path), max_steps=6, per_device_train_batch_size=4, logging_steps=1, report_to=[],
               save_strategy="no", use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0, **extra)


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_sft_trainer_lowers_the_loss(hf_dir, hf_tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    data = datasets.Dataset.from_dict({"text": ["The quick brown fox jumps over the lazy dog."] * 24})
    trainer = trl.SFTTrainer(model=model, args=_trl_args(trl.SFTConfig, tmp_path, learning_rate=1e-2),
                             train_dataset=data, processing_class=hf_tokenizer)
    trainer.train()
    losses = _losses(trainer)
    assert len(losses) == 6 and losses[-1] < 0.7 * losses[0]
    trainer.save_model(str(tmp_path / "final"))  # the released layout, with the settings TRL changed (pad id)
    saved = HymbaForCausalLM.from_pretrained(tmp_path / "final")
    assert saved.config == model.config.to_hymba() and saved.config.pad_token_id == hf_tokenizer.pad_token_id
    batch = hf_tokenizer(["The quick brown fox"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(saved(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_dpo_trainer_lowers_the_loss(hf_dir, hf_tokenizer, tmp_path):
    """DPO against a reference copy of the model: the loss starts at log 2 (policy = reference) and falls."""
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    data = datasets.Dataset.from_dict({"prompt": ["The capital of France is", "Two plus two is"] * 4,
                                       "chosen": [" Paris.", " four."] * 4, "rejected": [" Berlin.", " five."] * 4})
    trainer = trl.DPOTrainer(model=model, args=_trl_args(trl.DPOConfig, tmp_path, learning_rate=5e-3, beta=0.1),
                             train_dataset=data, processing_class=hf_tokenizer)
    trainer.train()
    losses = _losses(trainer)
    assert losses[0] == pytest.approx(0.6931, abs=1e-3) and losses[-1] < 0.5 * losses[0]
