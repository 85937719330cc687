"""A tiny causal language model for tests, built here with no download: a 2-layer Llama (hidden 32) and a
word-level tokenizer whose pieces are the words and punctuation of LLM4IDRec prompts plus single digits (so any
u<id>/i<id> can be written), decoded without spaces. Not a test module."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ("Given the user(u1)'s clicked list items:i1,i2, predict what is the list items to recommend to the "
         "user(u1). Please only answer the item IDs.")


def build_tiny_llama(folder: Path) -> Path:
    """Save the model and tokenizer as a Hugging Face folder at `folder`; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    pieces = sorted({p for p, _ in pre.pre_tokenize_str(WORDS)} | set("0123456789") | {"i", "u", ","})
    vocab = {t: i for i, t in enumerate(["<pad>", "<eos>", "<unk>", *pieces])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=512, pad_token_id=0, eos_token_id=1,
                                         bos_token_id=1))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
