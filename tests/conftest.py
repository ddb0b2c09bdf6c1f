"""Shared fixtures: tiny configs composed the way the CLI composes them, and CLI runners."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

from autoenc_cli.cli import main

# Under pytest-xdist (the README's `-n 2`) each worker gets one of the cores: one torch thread apiece,
# and in the processes it starts, instead of two workers each running two threads on two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Small enough for a 2-core CPU: 400 digits, 2 epochs.
TINY = ["data.limit=400", "trainer.epochs=2", "trainer.log_every=2"]
TINY_KEYS = {override.partition("=")[0] for override in TINY}


def with_tiny_defaults(argv: Sequence[str]) -> list[str]:
    """TINY's values are defaults a test's own later value replaces (autoenc refuses a key given twice)."""
    argv = list(argv)
    later = [override.partition("=")[0] for override in argv]
    return [
        argument
        for position, argument in enumerate(argv)
        if argument not in TINY or later[position] not in later[position + 1 :]
    ]


# A small .npz of 28 x 28 images for options that need a file (the config check reads its header).
SAMPLE_NPZ = Path(tempfile.mkdtemp(prefix="autoenc-tests-")) / "images.npz"
np.savez(SAMPLE_NPZ, images=np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8))
# And a .npy of 40 vectors of 16 floats, for data=vectors.
SAMPLE_VECTORS = SAMPLE_NPZ.with_name("vectors.npy")
np.save(SAMPLE_VECTORS, np.random.default_rng(0).standard_normal((40, 16)).astype(np.float32))


def case_id(value: object) -> str:
    """A parametrized case's id without the sample files' temporary folder, which every pytest process (each
    xdist worker) names differently: ids must be the same wherever the tests are collected."""
    text = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return text.replace(str(SAMPLE_NPZ.parent), "SAMPLES")


def write_activation_cache(folder: Path, shards: dict[str, list[np.ndarray]]) -> Path:
    """An activation cache laid out as autoenc harvest writes it, made without a language model: ``shards`` is
    {hook: [each shard's (rows, width) array]}, every hook with the same rows per shard, all of one dtype."""
    from autoenc_cli.data.activation_cache import write_cache

    identity = {
        "model": {"source": "hf", "name": "tiny", "fingerprint": "0" * 64}, "tokenizer": "0" * 64,
        "context_size": 9, "bos_id": 0, "text": {"source": "tiny", "fingerprint": "0" * 64}, "seed": 0,
        "shard_tokens": len(next(iter(shards.values()))[0]), "heldout_tokens": 0,
    }  # fmt: skip
    write_cache(folder, shards, identity)
    return folder


# And an activation cache of those 40 vectors (one hook, two shards), for data=activations.
SAMPLE_CACHE = write_activation_cache(
    SAMPLE_NPZ.with_name("cache"), {"model.layers.0": np.array_split(np.load(SAMPLE_VECTORS).astype(np.float16), 2)}
)


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    with initialize_config_module(config_module="autoenc_cli.configs", version_base="1.3"):
        return compose(config_name="train", overrides=with_tiny_defaults(overrides))


@pytest.fixture(autouse=True)
def root_logging_as_it_was():
    """A command run in the test's process configures the root logger (Hydra's logging, a run's train.log);
    each test leaves it as it found it, so no handler bound to the test's captured output, closed once the
    test ends, receives a later test's records."""
    root = logging.getLogger()
    before, level = set(root.handlers), root.level
    yield
    for handler in [handler for handler in root.handlers if handler not in before]:
        if not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


@pytest.fixture
def tiny() -> list[str]:
    return list(TINY)


def run_main(argv: Sequence[str]) -> int:
    """Run ``autoenc`` in this process; returns the exit code."""
    try:
        main(with_tiny_defaults(argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def run_cli(argv: Sequence[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``autoenc`` in a fresh interpreter, as a user would."""
    environment = {**os.environ, **(env or {})}
    environment.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "autoenc_cli", *with_tiny_defaults(argv)],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )


def only_run_dir(root: Path) -> Path:
    runs = sorted((root / "outputs" / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def train_in(root: Path, argv: Sequence[str]) -> None:
    """Run ``autoenc`` in ``root`` (for module-scoped fixtures, which cannot use monkeypatch)."""
    previous = Path.cwd()
    os.chdir(root)
    try:
        assert run_main(argv) == 0
    finally:
        os.chdir(previous)


# Tiny language models for the activation-capture and loss-recovered tests: random weights, a word-level
# tokenizer over TINY_TEXT's words, built in the test session (no download, nothing in the repository).
TINY_TEXT = [
    "the cat sat on the mat and the dog sat on the log",
    "a bird flew over the house and sang a song to the sun",
    "one two three four five six seven eight nine ten",
    "the quick brown fox jumps over the lazy dog again and again",
    "rain falls on the hills and the rivers run to the sea",
    "we read a book and then we wrote a letter to a friend",
]
TINY_SPECIALS = ("<bos>", "<eos>", "<unk>")


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({word for line in TINY_TEXT for word in line.split()})
    vocabulary = {token: index for index, token in enumerate([*TINY_SPECIALS, *words])}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


def tiny_language_model(kind: str, vocabulary: int):
    """A random 2-block causal LM of width 16: ``llama`` (hooks model.layers.N) or ``gpt2`` (transformer.h.N)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(
            vocab_size=vocabulary, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
        )  # fmt: skip
        return transformers.LlamaForCausalLM(config)
    config = transformers.GPT2Config(
        vocab_size=vocabulary, n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=1
    )
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="session")
def tiny_lm_folders(tmp_path_factory) -> dict[str, Path]:
    """{"llama": FOLDER, "gpt2": FOLDER}: Hugging Face folders (weights + tokenizer) for lm=hf lm.name=FOLDER."""
    root = tmp_path_factory.mktemp("tiny_lms")
    tokenizer = tiny_tokenizer()
    folders = {}
    for kind in ("llama", "gpt2"):
        folder = root / kind
        tiny_language_model(kind, len(tokenizer)).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[kind] = folder
    return folders


@pytest.fixture(scope="session")
def tiny_text_folder(tmp_path_factory) -> Path:
    """TINY_TEXT as a folder of .txt documents, repeated so that a capture has a few hundred tokens."""
    folder = tmp_path_factory.mktemp("tiny_text")
    for index, line in enumerate(TINY_TEXT):
        (folder / f"doc{index}.txt").write_text(" ".join([line] * 4) + "\n")
    return folder
