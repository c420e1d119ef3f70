"""Tiny randomly initialised causal LMs of several architectures, for tests and offline trials.

Each is built from a config in memory (no download), with seeded weights, and paired with a
byte-level tokenizer (256 byte tokens + <bos>, <eos>, <pad>) that round-trips any text exactly.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

PREFIX = "tiny-random-"
HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 128, 2, 4, 256, 256
# Weights ~ N(0, 0.2^2) instead of the usual 0.02: with the usual scale a random model's attention
# is almost uniform and its outputs hardly depend on position, so even 8 tokens cannot be fitted.
INIT_RANGE = 0.2
SPECIALS = ["<bos>", "<eos>", "<pad>"]


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: one token per UTF-8 byte."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def _config(arch: str, vocab: int, bos: int, eos: int, pad: int) -> PretrainedConfig:
    ids = dict(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, vocab_size=vocab, initializer_range=INIT_RANGE)
    if arch == "llama":
        return LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, num_key_value_heads=2,
                           max_position_embeddings=POSITIONS, **ids)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, num_key_value_heads=2,
                           max_position_embeddings=POSITIONS, **ids)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, max_position_embeddings=POSITIONS, **ids)
    if arch == "gpt2":
        return GPT2Config(n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=POSITIONS, **ids)
    if arch == "gemma3":
        return Gemma3TextConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                num_attention_heads=HEADS, num_key_value_heads=1, head_dim=16,
                                max_position_embeddings=POSITIONS, sliding_window=64,
                                final_logit_softcapping=30.0, **ids)  # exercises soft-capping
    if arch == "gemma":
        return GemmaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, num_key_value_heads=1, head_dim=16,
                           max_position_embeddings=POSITIONS, **ids)
    raise KeyError(arch)


TINY_ARCHS = ("llama", "gpt_neox", "gpt2", "qwen2", "gemma3", "gemma")


def build_tiny(arch: str, seed: int = 0, **config_overrides) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Build the tiny random model `arch` (one of TINY_ARCHS) and its byte tokenizer."""
    tok = byte_tokenizer()
    cfg = _config(arch, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    for k, v in config_overrides.items():
        setattr(cfg, k, v)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model, tok
