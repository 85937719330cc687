"""The local LoRA path on a tiny Llama and word-level tokenizer built in tests/tiny_llama.py (no download): a few
optimizer steps lower the loss, the adapter round-trips through safetensors in the store, and generation runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys.config import LLM4IDRecConfig
from recsys.llm4idrec.jsonl import chat_record
from recsys.llm4idrec.samples import prefix_samples

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")


def _records() -> list[dict]:
    histories = {u: tuple(range(10 + u, 16 + u)) for u in range(1, 6)}
    return [chat_record(s, 512) for s in prefix_samples(histories, per_user=4, seed=1)]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tests.tiny_llama import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_lora_steps_lower_the_loss_and_the_adapter_round_trips(tiny_model_dir, tmp_path):
    from recsys.llm4idrec.lora import adapter_tensors, attach_lora, generate, load_adapter, load_base, train_lora
    from storage.store import ArtifactStore

    config = LLM4IDRecConfig(max_steps=8, batch_size=4, grad_accumulation=2, lr=1e-2, device="cpu",
                             max_new_tokens=8)
    assert (config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_targets) == (8, 32, 0.05,
                                                                                             ("q_proj", "v_proj"))
    model, tok = load_base(tiny_model_dir, "cpu")
    base_q = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    peft_model = attach_lora(model, config)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == 2 * 2 * 2 * 8 * 32  # 2 layers x (q, v) x (A, B) x r x hidden
    seen = []
    logs = train_lora(peft_model, tok, _records(), config, on_step=seen.append)
    assert [log.step for log in logs] == list(range(1, 9)) and seen == logs
    first, last = np.mean([x.loss for x in logs[:3]]), np.mean([x.loss for x in logs[-3:]])
    assert last < first - 0.05 and logs[-1].loss < logs[0].loss, [x.loss for x in logs]
    assert logs[0].lr == pytest.approx(1e-2) and logs[-1].lr < logs[0].lr
    assert torch.equal(peft_model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight, base_q)

    tensors = adapter_tensors(peft_model)
    assert tensors and all("lora_" in k for k in tensors)
    store = ArtifactStore(tmp_path / "store")
    with store.write("llm4idrec-adapter", "k1", {"test": 1}) as w:
        w.tensors("adapter", tensors)
    fresh, _ = load_base(tiny_model_dir, "cpu")
    reloaded = load_adapter(fresh, store.read_tensors("llm4idrec-adapter/k1", "adapter"), config)
    batch = tok(["Given the user(u1)'s clicked list items:i11"], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, peft_model(**batch).logits, atol=1e-5)

    answers = generate(reloaded, tok, ["Given the user(u2)'s clicked list items:i12,i13"] * 3, config)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert generate(reloaded, tok, ["Given the user(u2)'s clicked list items:i12,i13"] * 3, config) == answers


def test_missing_base_model_is_named(tmp_path):
    from recsys.llm4idrec.lora import load_base

    with pytest.raises(FileNotFoundError, match="nowhere.gguf"):
        load_base(tmp_path / "nowhere.gguf")
