"""Load a frozen causal LM: a built-in short name, a local directory, a GGUF file or a hub id.

Every model comes back as a `FrozenLM`: in `eval()` mode, no parameter requiring grad, with its
tokenizer, a fingerprint of its weights and tokenizer, and a checked causal attention pattern.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from . import bundled, tiny
from .errors import PrototokensError
from .files import write_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class FrozenLM:
    """A frozen causal LM with its tokenizer: what every other module works against."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def max_positions(self) -> int | None:
        cfg = self.model.config
        cfg = getattr(cfg, "text_config", None) or cfg
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS or other special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    @property
    def bos_id(self) -> int:
        """The token that conditions the first text token in H_LM: BOS, else EOS."""
        tok = self.tokenizer
        for tid in (tok.bos_token_id, tok.eos_token_id):
            if tid is not None:
                return int(tid)
        raise PrototokensError(f"model {self.name} has neither a BOS nor an EOS token")


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PrototokensError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PrototokensError("device 'cuda' requested but no CUDA GPU is available")
    return dev


def dtype_name(dtype: torch.dtype) -> str:
    """The short name ("fp32", "bf16", "fp16") of a model dtype; torch's name for any other."""
    return next((k for k, v in DTYPES.items() if v == dtype), str(dtype).removeprefix("torch."))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype in DTYPES:
        return DTYPES[dtype]
    named = getattr(torch, str(dtype), None)  # torch's names, as dtype_name writes dtypes outside DTYPES
    if isinstance(named, torch.dtype) and named.is_floating_point:
        return named
    raise PrototokensError(f"unknown dtype {dtype!r}; known: auto, {', '.join(DTYPES)}")


def _quiet():
    """Silence transformers' loading chatter (warnings about unused weights, GGUF notes)."""
    logging.getLogger("transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers")


def load_gguf(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Dequantise a GGUF file with transformers (needs the `gguf` package)."""
    _quiet()
    hf_logging.enable_progress_bar()  # dequantising takes a while: show it
    path = Path(path)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # gguf raises many kinds of errors on a foreign or damaged file
        raise PrototokensError(f"cannot load GGUF file {path}: {str(e).splitlines()[0]}") from None
    # the weights are now plain fp32; drop the GGUF marker so the model saves like any other
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


def _from_pretrained(source: str, local_only: bool) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    _quiet()
    hf_logging.disable_progress_bar()  # a cached load takes a second: no bar needed
    try:
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_only, dtype=torch.float32)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "Unrecognized configuration class" in msg or "AutoModelForCausalLM" in msg:
            raise PrototokensError(f"{source} is not a causal language model ({msg[:120]})") from None
        raise PrototokensError(f"cannot load model {source}: {msg}") from None
    except OSError as e:
        raise PrototokensError(f"cannot load model {source}: {str(e).splitlines()[0]}") from None
    return model, tok


def model_names() -> list[tuple[str, str, str]]:
    """(name, description, cache status) for every built-in model name."""
    rows = [(b.name, b.description, "cached" if bundled.is_cached(b.name) else "not cached (fetched on first use)")
            for b in bundled.BUNDLED.values()]
    rows += [(tiny.PREFIX + a, f"tiny random {a} model (d={tiny.HIDDEN}, {tiny.LAYERS} layers, byte tokenizer)",
              "built in memory") for a in tiny.TINY_ARCHS]
    return rows


def check_model_name(name: str) -> None:
    """Raise PrototokensError now, without loading anything, if `name` cannot name a model."""
    if name in bundled.BUNDLED:
        return
    if name.startswith(tiny.PREFIX):
        if name[len(tiny.PREFIX):] not in tiny.TINY_ARCHS:
            raise PrototokensError(f"unknown tiny model {name!r}; known: {', '.join(tiny.PREFIX + a for a in tiny.TINY_ARCHS)}")
        return
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise PrototokensError(f"GGUF file not found: {path}")
        return
    if path.is_dir() or "/" in name:
        return
    known = ", ".join(n for n, _, _ in model_names())
    raise PrototokensError(f"unknown model {name!r}: not a built-in name ({known}), a directory, a .gguf file or a hub id")


def _raw_load(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    check_model_name(name)  # from here on, every error is one of loading, not of naming
    if name in bundled.BUNDLED:
        return _from_pretrained(str(bundled.ensure_cached(name)), local_only=True)
    if name.startswith(tiny.PREFIX):
        return tiny.build_tiny(name[len(tiny.PREFIX):])
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        return load_gguf(path)
    if path.is_dir():
        return _from_pretrained(str(path), local_only=True)
    if not path.exists():  # check_model_name let it through: a hub id
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        return _from_pretrained(name, local_only=offline)
    raise PrototokensError(f"cannot load model {name!r}: not a directory, a .gguf file or a hub id")


def fingerprint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the weights (sampled, rounded to bf16 so any load dtype agrees) and vocabulary."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1)
        k = min(flat.numel(), 257)
        idx = torch.arange(k) * (flat.numel() - 1) // max(1, k - 1)
        sample = flat[idx].to("cpu", torch.float32).to(torch.bfloat16).view(torch.int16)
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(sample.numpy().tobytes())
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    h.update(repr(vocab).encode())
    return h.hexdigest()[:16]


def check_model(lm: FrozenLM, model_name: str, fingerprint: str, width: int, what: str = "memory vectors") -> None:
    """Refuse to use vectors with a model other than the one they were fitted on."""
    if fingerprint != lm.fingerprint:
        raise PrototokensError(
            f"these {what} were fitted on {model_name!r} (fingerprint {fingerprint}); "
            f"the loaded model {lm.name!r} has fingerprint {lm.fingerprint}. Load {model_name!r} to decode them."
        )
    if width != lm.hidden_size:
        raise PrototokensError(f"{what} have width {width}, the model {lm.hidden_size}")


@torch.no_grad()
def check_causal(model: PreTrainedModel) -> None:
    """Raise unless the output at position 0 ignores later inputs (a causal attention mask)."""
    d = model.get_input_embeddings().weight.shape[1]
    device, dtype = model.device, model.get_input_embeddings().weight.dtype
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, d, generator=g).to(device, dtype)
    y = x.clone()
    y[0, 2] = torch.randn(d, generator=g).to(device, dtype)
    a = model(inputs_embeds=x).logits[0, 0].float()
    b = model(inputs_embeds=y).logits[0, 0].float()
    if not torch.allclose(a, b, atol=1e-3, rtol=1e-3):
        raise PrototokensError(f"{model.config.model_type} model is not causal: its first output depends on later inputs")


def freeze(model: PreTrainedModel) -> PreTrainedModel:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_model(name: str = bundled.DEFAULT_MODEL, device: str | None = "auto",
               dtype: str | torch.dtype | None = "auto") -> FrozenLM:
    """Load a frozen causal LM by built-in name, directory, .gguf path or hub id.

    >>> lm = load_model("tiny-random-llama", device="cpu")
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    model, tok = _raw_load(name)
    if getattr(model.config, "is_encoder_decoder", False):
        raise PrototokensError(f"{name} is an encoder-decoder model, not a causal language model")
    fp = _cached_checks(name)  # bundled models: checked once, when their cache was written
    trusted = fp is not None
    if not trusted:
        fp = fingerprint(model, tok)
    model = freeze(model.to(device=dev, dtype=dt))
    if not trusted:
        check_causal(model)
        _store_checks(name, fp)
    return FrozenLM(name=name, model=model, tokenizer=tok, fingerprint=fp)


def _weights_stamp(name: str) -> str | None:
    if name not in bundled.BUNDLED:
        return None
    weights = bundled.model_dir(name) / "model.safetensors"
    if not weights.exists():
        return None
    st = weights.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _cached_checks(name: str) -> str | None:
    """The fingerprint of a bundled model whose checks are cached and match its weights file."""
    stamp = _weights_stamp(name)
    path = bundled.model_dir(name) / "checks.json"
    if stamp is None or not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("fingerprint") if saved.get("stamp") == stamp and saved.get("causal") else None


def _store_checks(name: str, fp: str) -> None:
    """Remember a bundled model's fingerprint and causality, so later loads skip both (under a second)."""
    stamp = _weights_stamp(name)
    if stamp is not None:
        write_json(bundled.model_dir(name) / "checks.json", {"stamp": stamp, "fingerprint": fp, "causal": True},
                   indent=None)
