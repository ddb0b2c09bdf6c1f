"""Loss recovered (issue 27, item 3): the arithmetic of autoenc_cli.lm.scoring on tiny random Llama and
GPT-2 models, and its place in a run's records (metrics.json at the end of a run on an activation cache,
eval.json, the sweep's summary and frontier)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from autoenc_cli.lm.models import load_language_model  # noqa: E402
from autoenc_cli.lm.scoring import SpliceScore, recovered, score_splices  # noqa: E402

from conftest import SAMPLE_VECTORS, only_run_dir, read_metrics, run_main, train_in, write_activation_cache  # noqa: E402

HOOKS = {"llama": "model.layers.1", "gpt2": "transformer.h.1"}
BOS = 0


def heldout(contexts: int = 5, size: int = 12, vocabulary: int = 49, seed: int = 0) -> np.ndarray:
    """(contexts, size) token ids, each context starting with the BOS id, as harvest writes them."""
    ids = np.random.default_rng(seed).integers(3, vocabulary, size=(contexts, size))
    ids[:, 0] = BOS
    return ids.astype(np.int64)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny(request, tiny_lm_folders):
    lm = load_language_model({"source": "hf", "name": str(tiny_lm_folders[request.param])}, "cpu")
    return request.param, lm


def affine(activation: torch.Tensor) -> torch.Tensor:
    return 0.5 - 2.0 * activation.flip(-1)  # far from the activation: a KL well above float32 rounding


@pytest.mark.parametrize("batch_size", [2, None])
def test_an_identity_sae_recovers_exactly_one_and_a_zero_one_exactly_zero(tiny, batch_size):
    kind, lm = tiny
    mean = np.linspace(-1, 1, 16)
    scores = score_splices(
        lm,
        HOOKS[kind],
        heldout(),
        mean,
        {"identity": lambda a: a, "zero": torch.zeros_like, "mean": lambda a: torch.as_tensor(mean).expand_as(a)},
        batch_size,
    )
    identity, zero, mean_sae = scores["identity"], scores["zero"], scores["mean"]
    assert identity.ce_spliced == identity.ce_clean
    assert identity.kl == 0.0
    assert identity.loss_recovered == 1.0
    assert zero.ce_spliced == zero.ce_zero_ablated
    assert zero.loss_recovered == 0.0
    assert zero.kl > 0
    assert mean_sae.ce_spliced == mean_sae.ce_mean_ablated  # an SAE that outputs the mean is mean-ablation
    # one clean, zero- and mean-ablated pass shared by every SAE
    assert len({(s.ce_clean, s.ce_zero_ablated, s.ce_mean_ablated, s.tokens) for s in scores.values()}) == 1
    assert (identity.tokens, identity.predictions) == (5 * 12, 5 * 11)
    assert identity.ce_zero_ablated != identity.ce_clean  # the hook matters to the model


def test_the_numbers_are_those_of_a_direct_computation_with_the_activation_edited_by_hand(tiny):
    kind, lm = tiny
    contexts = heldout()
    mean = np.linspace(-1, 1, 16)
    score = score_splices(lm, HOOKS[kind], contexts, mean, {"affine": affine}, batch_size=2)["affine"]

    ids = torch.as_tensor(contexts)
    targets = ids[:, 1:].reshape(-1)
    module = dict(lm.model.named_modules())[HOOKS[kind]]

    def logits_with(edit) -> torch.Tensor:
        handle = None
        if edit is not None:

            def by_hand(module, inputs, output):
                edited = output.clone()
                edited[:, 1:] = edit(output[:, 1:])  # position 0, the BOS token, keeps its activation
                return edited

            handle = module.register_forward_hook(by_hand)
        try:
            with torch.no_grad():
                logits = lm.model(input_ids=ids).logits[:, :-1]
                return logits.reshape(-1, logits.shape[-1]).double()  # a float64 reference
        finally:
            if handle is not None:
                handle.remove()

    clean = logits_with(None)
    spliced_logits = logits_with(affine)
    zero = logits_with(torch.zeros_like)
    mean_ablated = logits_with(lambda a: torch.as_tensor(mean, dtype=a.dtype).expand_as(a))
    expected = {
        "ce_clean": F.cross_entropy(clean, targets).item(),
        "ce_spliced": F.cross_entropy(spliced_logits, targets).item(),
        "ce_zero_ablated": F.cross_entropy(zero, targets).item(),
        "ce_mean_ablated": F.cross_entropy(mean_ablated, targets).item(),
        "kl": F.kl_div(
            F.log_softmax(spliced_logits, -1), F.log_softmax(clean, -1), log_target=True, reduction="batchmean"
        ).item(),
    }
    for name, value in expected.items():  # float32 log-softmax against a float64 reference
        assert getattr(score, name) == pytest.approx(value, rel=1e-5 if name == "kl" else 1e-6), name
    assert (score.tokens, score.predictions) == (ids.numel(), targets.numel())
    # the definition, on the cross-entropies just checked
    span = score.ce_zero_ablated - score.ce_clean
    assert score.loss_recovered == (score.ce_zero_ablated - score.ce_spliced) / span
    assert 0 < score.kl


def test_loss_recovered_is_undefined_where_ablation_changes_nothing():
    assert recovered(2.0, 2.5, 3.0) == 0.5
    assert recovered(2.0, 2.0, 2.0) is None
    assert SpliceScore(2.0, 2.0, 2.0, 2.0, 0.0, 12, 10).loss_recovered is None


# ---------------------------------------------------------------------------------------------------
# A run on an activation cache: scored at its end (metrics.json), by autoenc eval (eval.json), in a sweep.

CONTEXT = 9  # tokens per context, BOS included: 8 cached rows each
TRAIN = ["model=sparse_fc", "sparsity=topk", "k=4", "model.code_dim=32", "data.batch_size=32", "trainer.epochs=2"]
TRAIN += ["trainer.figures=false"]


def harvested_cache(folder: Path, lm_folder: Path, hook: str, contexts: int = 40, heldout_contexts: int = 6) -> Path:
    """An activation cache of ``hook``'s real activations on random text, laid out as autoenc harvest lays
    it out (shards without the BOS position, held-out contexts beside them, the model and its fingerprint
    in the manifest), made with the model itself rather than harvest."""
    from autoenc_cli.data.activation_cache import read_manifest, write_manifest
    from autoenc_cli.folder_layout import CacheLayout
    from autoenc_cli.lm.hooks import capturing, forward_until_captured

    lm = load_language_model({"source": "hf", "name": str(lm_folder)}, "cpu")
    ids = heldout(contexts + heldout_contexts, CONTEXT, seed=1)
    with torch.inference_mode(), capturing(lm.model, [hook]) as captured:
        forward_until_captured(lm.model, captured, input_ids=torch.as_tensor(ids[:contexts]), use_cache=False)
    rows = captured[hook][:, 1:].reshape(-1, captured[hook].shape[-1]).numpy().astype(np.float32)
    write_activation_cache(folder, {hook: np.array_split(rows, 2)})
    np.save(CacheLayout(folder).heldout_tokens, ids[contexts:])
    manifest = read_manifest(folder)
    manifest.identity.update(model={**lm.description, "fingerprint": lm.fingerprint()}, context_size=CONTEXT)
    manifest.identity["heldout_tokens"] = heldout_contexts * CONTEXT
    manifest.heldout = {"contexts": heldout_contexts, "tokens": heldout_contexts * CONTEXT}
    write_manifest(folder, manifest)
    return folder


def with_model_fingerprint(folder: Path, fingerprint: str) -> Path:
    from autoenc_cli.data.activation_cache import read_manifest, write_manifest

    manifest = read_manifest(folder)
    manifest.identity["model"]["fingerprint"] = fingerprint
    write_manifest(folder, manifest)
    return folder


LM_FIELDS = ("loss_recovered", "lm_kl", "lm_ce_clean", "lm_ce_spliced", "lm_ce_zero_ablated", "lm_ce_mean_ablated")


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory, tiny_lm_folders) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scored_run")
    cache = harvested_cache(root / "cache", tiny_lm_folders["llama"], HOOKS["llama"])
    train_in(root, ["train", "data=activations", f"data.path={cache}", "data.heldout_tokens=27", *TRAIN])
    return cache, only_run_dir(root)


def direct_score(run_dir: Path, cache: Path, contexts: int) -> SpliceScore:
    """The run's last network spliced in by hand: its normalisation, the held-out contexts, the cache's mean."""
    from autoenc_cli.data.activation_cache import ActivationCache
    from autoenc_cli.evaluation.loading import load_run
    from autoenc_cli.lm.run_scoring import reconstruction_splice

    run = load_run(run_dir, "last")
    opened = ActivationCache.open(cache)
    lm = load_language_model(opened.manifest.identity["model"], "cpu")
    splice = reconstruction_splice(run.model, run.input_normalisation())
    held = opened.heldout_tokens()[:contexts]
    return score_splices(lm, HOOKS["llama"], held, opened.manifest.mean(HOOKS["llama"]), {"run": splice})["run"]


def test_a_run_on_an_activation_cache_ends_with_its_loss_recovered_in_metrics_json(scored_run):
    cache, run_dir = scored_run
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed"
    assert metrics["lm_heldout_tokens"] == 27  # 3 whole contexts of 9
    expected = direct_score(run_dir, cache, 3)
    assert [metrics[name] for name in LM_FIELDS] == [
        expected.loss_recovered,
        expected.kl,
        expected.ce_clean,
        expected.ce_spliced,
        expected.ce_zero_ablated,
        expected.ce_mean_ablated,
    ]
    assert metrics["lm_kl"] > 0 and metrics["lm_ce_zero_ablated"] != metrics["lm_ce_clean"]
    page = (run_dir / "report.html").read_text()
    assert "loss_recovered" in page and "spliced in at the hook" in page  # the field's description


def test_eval_reports_the_same_numbers_and_takes_its_own_heldout_token_count(scored_run, tmp_path, capsys):
    cache, run_dir = scored_run
    metrics = read_metrics(run_dir)
    out = tmp_path / "eval.json"
    assert run_main(["eval", f"run={run_dir}", "checkpoint=last", f"out={out}"]) == 0
    report = json.loads(out.read_text())
    assert [report[name] for name in (*LM_FIELDS, "lm_heldout_tokens")] == [
        metrics[name] for name in (*LM_FIELDS, "lm_heldout_tokens")
    ]
    assert (
        run_main(["eval", f"run={run_dir}", "checkpoint=last", f"out={out}", "overwrite=true", "heldout_tokens=10"])
        == 0
    )
    report = json.loads(out.read_text())
    assert report["lm_heldout_tokens"] == 18  # whole contexts: 2 of 9
    assert report["lm_ce_clean"] == direct_score(run_dir, cache, 2).ce_clean
    capsys.readouterr()
    assert run_main(["eval", f"run={run_dir}", f"out={out}", "overwrite=true", "heldout_tokens=1000"]) == 0
    report = json.loads(out.read_text())
    assert report["lm_heldout_tokens"] == 54  # every held-out context the cache holds
    assert "1,000 held-out tokens asked for, but the activation cache" in capsys.readouterr().out
    assert run_main(["eval", f"run={run_dir}", f"out={out}", "overwrite=true", "heldout_tokens=0"]) == 0
    assert not any(name in json.loads(out.read_text()) for name in (*LM_FIELDS, "lm_heldout_tokens"))


def test_a_cache_whose_model_changed_is_refused_by_eval_and_noted_by_the_run(
    tiny_lm_folders, tmp_path, monkeypatch, capsys
):
    cache = with_model_fingerprint(
        harvested_cache(tmp_path / "cache", tiny_lm_folders["llama"], HOOKS["llama"]), "f" * 64
    )
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "data=activations", f"data.path={cache}", *TRAIN, "trainer.epochs=1"]) == 0
    run_dir = only_run_dir(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "completed" and not any(name in metrics for name in LM_FIELDS)
    fingerprint = load_language_model({"source": "hf", "name": str(tiny_lm_folders["llama"])}).fingerprint()
    message = (
        f"the language model {tiny_lm_folders['llama']} is not the one the activation cache '{cache}' was harvested "
        f"from: its weights' fingerprint is {fingerprint[:12]}..., the cache's ffffffffffff...; loss recovered needs "
        "that model (restore it, or harvest the cache again)"
    )
    assert f"note: loss recovered skipped (DataError: {message})" in " ".join(capsys.readouterr().out.split())
    out = tmp_path / "eval.json"
    assert run_main(["eval", f"run={run_dir}", f"out={out}"]) == 2
    assert capsys.readouterr().err.strip() == f"autoenc: error: {message}"
    assert not out.exists()


def test_a_cache_without_held_out_text_is_a_note_for_the_run_and_an_error_for_eval(
    tiny_lm_folders, tmp_path, monkeypatch, capsys
):
    from autoenc_cli.folder_layout import CacheLayout

    cache = harvested_cache(tmp_path / "cache", tiny_lm_folders["llama"], HOOKS["llama"])
    np.save(CacheLayout(cache).heldout_tokens, np.empty((0, CONTEXT), np.int64))  # harvested with heldout_tokens=0
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "data=activations", f"data.path={cache}", *TRAIN, "trainer.epochs=1"]) == 0
    run_dir = only_run_dir(tmp_path)
    assert not any(name in read_metrics(run_dir) for name in LM_FIELDS)
    message = (
        f"the activation cache '{cache}' holds no held-out text (harvested with heldout_tokens=0?): nothing to score "
        "loss recovered on; data.heldout_tokens=0 (autoenc eval: heldout_tokens=0) skips it"
    )
    assert f"note: loss recovered skipped (DataError: {message})" in " ".join(capsys.readouterr().out.split())
    assert run_main(["eval", f"run={run_dir}"]) == 2
    assert capsys.readouterr().err.strip() == f"autoenc: error: {message}"
    assert not (run_dir / "eval.json").exists()
    assert run_main(["eval", f"run={run_dir}", "heldout_tokens=0"]) == 0  # the way round it
    assert not any(name in json.loads((run_dir / "eval.json").read_text()) for name in LM_FIELDS)


def test_heldout_tokens_for_a_run_on_other_data_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "data=vectors", f"data.path={SAMPLE_VECTORS}", *TRAIN, "trainer.epochs=1"]) == 0
    run_dir = only_run_dir(tmp_path)
    capsys.readouterr()
    assert run_main(["eval", f"run={run_dir}", "heldout_tokens=64"]) == 2
    assert capsys.readouterr().err.strip() == (
        "autoenc: error: heldout_tokens=64 is not allowed: loss recovered scores runs on a language model's "
        "activations (data=activations), not data=vectors"
    )
    assert not (run_dir / "eval.json").exists()


def test_a_stacked_sweep_loads_the_model_once_and_scores_every_job_in_one_set_of_passes(
    tiny_lm_folders, tmp_path, monkeypatch
):
    import autoenc_cli.lm.models as models
    import autoenc_cli.lm.run_scoring as run_scoring

    cache = harvested_cache(tmp_path / "cache", tiny_lm_folders["gpt2"], HOOKS["gpt2"])
    loads, scorings = [], []
    load, score = models.load_language_model, run_scoring.score_splices
    monkeypatch.setattr(models, "load_language_model", lambda *a, **k: loads.append(a) or load(*a, **k))
    monkeypatch.setattr(run_scoring, "score_splices", lambda *a, **k: scorings.append(sorted(a[4])) or score(*a, **k))
    monkeypatch.chdir(tmp_path)
    argv = ["train", "-m", "hydra/launcher=stacked", "data=activations", f"data.path={cache}", *TRAIN]
    assert run_main([*argv, "k=2,4", "hydra.sweep.dir=sweep"]) == 0
    sweep = tmp_path / "sweep"
    assert len(loads) == 1
    assert scorings == [[str(sweep / "0"), str(sweep / "1")]]  # one clean, zero and mean pass for both
    jobs = [read_metrics(sweep / job) for job in ("0", "1")]
    assert all(job["lm_heldout_tokens"] == 54 for job in jobs)  # the default asks for more than the cache holds
    assert jobs[0]["lm_ce_clean"] == jobs[1]["lm_ce_clean"] and jobs[0]["lm_ce_spliced"] != jobs[1]["lm_ce_spliced"]
    with open(sweep / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [float(row["loss_recovered"]) for row in rows] == [job["loss_recovered"] for job in jobs]
    assert [float(row["lm_kl"]) for row in rows] == [job["lm_kl"] for job in jobs]
    assert (sweep / "figures" / "loss_recovered.png").is_file()
    assert 'src="figures/loss_recovered.png"' in (sweep / "report.html").read_text()
    # activations have no image layout: no page of empty dictionary panels, and no link to one
    assert not (sweep / "figures" / "dictionaries.png").exists()
    assert "dictionaries.png" not in (sweep / "report.html").read_text()


def test_the_loss_recovered_frontier_keeps_the_runs_no_other_beats_on_both_l0_and_loss_recovered():
    from autoenc_cli.artifacts.figures import non_dominated

    points = [("a", 4, 0.5), ("b", 8, 0.9), ("c", 8, 0.7), ("d", 16, 0.85), ("e", 32, 0.95), ("f", 2, 0.2)]
    assert [label for label, _, _ in non_dominated(points, higher_is_better=True)] == ["f", "a", "b", "e"]


def test_the_summary_table_shows_loss_recovered_and_kl_only_where_a_run_has_them():
    from autoenc_cli.artifacts.sweep_report import TABLE_COLUMNS, table_columns

    assert table_columns(None, [{"loss_recovered": None}]) == TABLE_COLUMNS
    assert table_columns(None, [{"loss_recovered": None}, {"loss_recovered": 0.9}]) == (
        *TABLE_COLUMNS,
        "loss_recovered",
        "lm_kl",
    )
