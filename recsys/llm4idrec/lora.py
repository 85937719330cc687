"""Local LoRA fine-tuning and generation with transformers + peft (official code: newlei/LLM4IDRec
`lora_tuning.py`, `predict.py`; reference notes C.4-C.5).

The base model is any causal language model given as a Hugging Face folder or a `.gguf` file (transformers
dequantizes GGUF to float32 through the `gguf` package). Each sequence is the chat record rendered with the
tokenizer's chat template (prompt + target + end of turn), or "prompt\\ntarget<eos>" for a tokenizer without one;
the loss covers every non-padding token, as the official DataCollatorForLanguageModeling(mlm=False) does. One
optimizer step averages `grad_accumulation` micro-batches of `batch_size` sequences (AdamW, linear decay to 0
over `max_steps`, the HF Trainer's defaults).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys.config import LLM4IDRecConfig
from recsys.train.trainer import resolve_device


@dataclass(frozen=True)
class StepLog:
    """One optimizer step: its mean training loss (nats per token), learning rate and seconds."""

    step: int
    loss: float
    lr: float
    seconds: float


def load_base(path: str | Path, device: str = "auto") -> tuple[Any, Any]:
    """(model, tokenizer) from a Hugging Face folder or a .gguf file, model in float32 on `device`, in eval mode.
    Raises FileNotFoundError naming `path` when it does not exist."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"base model not found: {path} (a Hugging Face folder or a .gguf file)")
    folder, extra = (path.parent, {"gguf_file": path.name}) if path.suffix == ".gguf" else (path, {})
    tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **extra)
    return model.to(resolve_device(device)).eval(), tokenizer


def lora_config(config: LLM4IDRecConfig) -> Any:
    """peft's LoraConfig of `config` (r, alpha, dropout, target modules; causal LM)."""
    from peft import LoraConfig

    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_targets), task_type="CAUSAL_LM")


def attach_lora(model: Any, config: LLM4IDRecConfig) -> Any:
    """`model` wrapped with fresh LoRA adapters (`lora_config`)."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(config))


def adapter_config(config: LLM4IDRecConfig, base_model: str) -> dict[str, Any]:
    """The `adapter_config.json` of peft's adapter folder for `config`, naming `base_model`: with the adapter's
    tensors as `adapter_model.safetensors` (`adapter_tensors` names), the folder that
    `peft.PeftModel.from_pretrained` and vLLM's `--lora-modules NAME=FOLDER` load."""
    data = lora_config(config).to_dict()
    data["base_model_name_or_path"] = base_model
    return {k: sorted(v) if isinstance(v, set) else getattr(v, "value", v) for k, v in data.items()}


def _has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def sequence_text(tokenizer: Any, record: dict) -> str:
    """The training text of one chat record (module docstring)."""
    if _has_template(tokenizer):
        return tokenizer.apply_chat_template(record["messages"], tokenize=False)
    prompt = "\n".join(m["content"] for m in record["messages"] if m["role"] != "assistant")
    answer = "\n".join(m["content"] for m in record["messages"] if m["role"] == "assistant")
    return f"{prompt}\n{answer}{tokenizer.eos_token}"


def generation_prompt(tokenizer: Any, prompt: str) -> str:
    """The text a generation starts from: the chat template's user turn and assistant header, or "prompt\\n"."""
    if _has_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{prompt}\n"


def _batch(tokenizer: Any, texts: Sequence[str], max_length: int, device: torch.device) -> dict[str, torch.Tensor]:
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=max_length,
                    add_special_tokens=False)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device),
            "labels": labels.to(device)}


def train_lora(model: Any, tokenizer: Any, records: Sequence[dict], config: LLM4IDRecConfig,
               on_step: Callable[[StepLog], None] | None = None) -> list[StepLog]:
    """Train `model` (already wrapped by `attach_lora`) for `config.max_steps` optimizer steps on `records`,
    cycling through them in a seeded order reshuffled each pass. Returns one StepLog per step."""
    if not records:
        raise ValueError("no training records")
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    texts = [sequence_text(tokenizer, r) for r in records]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / config.max_steps))
    order, cursor, logs = rng.permutation(len(texts)), 0, []
    tokenizer.padding_side = "right"
    model.train()
    for step in range(1, config.max_steps + 1):
        start, total = time.perf_counter(), 0.0
        lr = schedule.get_last_lr()[0]
        for _ in range(config.grad_accumulation):
            picked = []
            while len(picked) < config.batch_size:
                if cursor == len(order):
                    order, cursor = rng.permutation(len(texts)), 0
                picked.append(texts[order[cursor]])
                cursor += 1
            loss = model(**_batch(tokenizer, picked, config.max_length, device)).loss
            (loss / config.grad_accumulation).backward()
            total += float(loss.detach())
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        log = StepLog(step, total / config.grad_accumulation, lr, time.perf_counter() - start)
        logs.append(log)
        if on_step is not None:
            on_step(log)
    model.eval()
    return logs


def adapter_tensors(model: Any) -> dict[str, torch.Tensor]:
    """The LoRA adapter's weights (peft's state-dict names), on CPU, contiguous: what is saved as safetensors."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def load_adapter(model: Any, tensors: dict[str, Any], config: LLM4IDRecConfig) -> Any:
    """`model` (the base) with LoRA adapters of `config` holding `tensors` (numpy or torch), in eval mode."""
    from peft import set_peft_model_state_dict

    wrapped = attach_lora(model, config)
    device = next(wrapped.parameters()).device
    set_peft_model_state_dict(wrapped, {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in tensors.items()})
    return wrapped.eval()


@torch.no_grad()
def generate(model: Any, tokenizer: Any, prompts: Sequence[str], config: LLM4IDRecConfig, *,
             batch_size: int = 8) -> list[str]:
    """The model's answer to each prompt: sampled with `config.temperature` / `top_p` (greedy at temperature 0),
    at most `config.max_new_tokens` new tokens, left padding; seeded by `config.seed`."""
    device = next(model.parameters()).device
    torch.manual_seed(config.seed)
    tokenizer.padding_side = "left"
    sample = config.temperature > 0
    kwargs = {"do_sample": sample, "max_new_tokens": config.max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
    if sample:
        kwargs.update(temperature=config.temperature, top_p=config.top_p)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        texts = [generation_prompt(tokenizer, p) for p in prompts[start:start + batch_size]]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        out = model.generate(**enc, **kwargs)
        answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers
