"""The `llm4idrec` flow as a real Prefect run on real ML-100K rows (60 users) with a tiny Llama built in the test:
samples, LoRA fine-tune, generation and parsing, augmented split, MF on original and augmented data,
the report; a second run is served from the cache."""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytest.importorskip("peft")

from flows.llm4idrec import llm4idrec_flow  # noqa: E402
from recsys.config import DataConfig, LLM4IDRecConfig, LLM4IDRecRunConfig, TrainConfig  # noqa: E402
from storage.store import ArtifactStore  # noqa: E402


@pytest.mark.slow
def test_flow_end_to_end_and_cached(small_movielens, tmp_path):
    from tests.tiny_llama import build_tiny_llama

    model_dir = build_tiny_llama(tmp_path / "tiny")
    config = LLM4IDRecRunConfig(
        data=DataConfig(dataset=str(small_movielens)),
        train=TrainConfig(max_epochs=2, device="cpu"),
        downstream=("mf",),
        llm4idrec=LLM4IDRecConfig(base_model=str(model_dir), sample_users=8, prefixes_per_user=2, max_steps=2,
                                  batch_size=2, grad_accumulation=1, max_new_tokens=24, max_prompt_tokens=128,
                                  device="cpu", max_base_rank=200),
    )
    store, out = tmp_path / "store", tmp_path / "out"
    result = llm4idrec_flow(config=config, store_root=str(store), out_dir=str(out))
    refs, s = result["refs"], ArtifactStore(store)
    records = s.read_table(refs["samples"], "records")
    assert records["user_id"].nunique() == 8 and len(records) == 16
    train = s.read_table(refs["split"], "train")
    augmented = s.read_table(refs["augmented_split"], "train")
    merge = json.loads((out / "generation.json").read_text())["merge"]
    assert len(augmented) == len(train) + merge["added"] and merge["after_filter"] <= merge["generated"]
    assert pd.merge(train, augmented).shape[0] == len(train)  # every original pair kept
    for part in ("valid", "test"):
        assert s.read_table(refs["augmented_split"], part).equals(s.read_table(refs["split"], part))
    summary = result["summary"]
    assert summary["users"] == 8 and summary["pieces"] == summary["kept"] + sum(summary["dropped"].values())
    frame = pd.read_parquet(out / "metrics.parquet")
    assert set(frame["variant"]) == {"mf", "mf+llm4idrec"}
    assert len(pd.read_parquet(out / "loss.parquet")) == 2
    report = (out / "report.md").read_text()
    assert "LLM4IDRec on" in report and report.splitlines()[2].startswith("**LLM4IDRec augmentation ")  # verdict
    assert "## Test by user group" in report and "Fine-tuning (local LoRA): 2 steps" in report
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), out / "adapter")
    stored = s.read_tensors(refs["lora"], "adapter")
    exported = get_peft_model_state_dict(loaded)
    assert set(exported) == set(stored) and all((exported[k].numpy() == stored[k]).all() for k in stored)
    assert any(abs(stored[k]).sum() > 0 for k in stored if "lora_B" in k)  # trained, not the zero init
    state = llm4idrec_flow(config=config, store_root=str(store), return_state=True)
    assert state.result()["refs"] == refs
    from tests.test_flow_base import task_states

    states = task_states(state.state_details.flow_run_id, expected=8)
    assert {n: st for n, st in states.items() if n.startswith("llm4idrec")} == dict.fromkeys(
        ("llm4idrec-data", "llm4idrec-lora", "llm4idrec-generate", "llm4idrec-split"), "Cached"), states
