"""``autoenc export ... format=saelens``: a sparse autoencoder as the folder SAELens loads
(``SAE.load_from_disk(DIR)``, SAELens >= 6; SAEBench takes the loaded SAE), written from its documented
format and checked against SAELens 6.54 itself:

    DIR/cfg.json                  architecture (standard | topk | jumprelu), d_in, d_sae, dtype, k for top-k,
                                  normalize_activations "none", and metadata: the language model, hook,
                                  context size and text an activation cache names, what was folded in
    DIR/sae_weights.safetensors   W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_in), b_dec, and threshold
                                  (d_sae,) for jumprelu

SAELens computes ``f = rule((x - b_dec) @ W_enc + b_enc)``, ``x_hat = f @ W_dec + b_dec`` on the hook's raw
activations. autoenc's model sees normalised inputs minus its own input bias, and decodes with a bias of
its own; all of that folds into these four tensors exactly (``fold``), so encode and decode equal the
run's on raw activations. Decoder rows are scaled to unit norm with the norms folded into the encoder (and
thresholds), except for top-k with rows of different norms, whose choice of units that would change.
BatchTopK (and Matryoshka BatchTopK) go out as jumprelu with the threshold the batch top-k implies, as
SAELens saves them; JumpReLU with its thresholds as applied; L1 and no sparsity as standard (ReLU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from autoenc_cli.errors import UserError
from autoenc_cli.folder_layout import SAELENS_CONFIG

# The SAELens version whose cfg.json layout this writes (>= 6: model and hook in a "metadata" mapping;
# without a version there, SAELens reads the mapping as a pre-6 config and drops it).
SAELENS_LAYOUT_VERSION = "6.54.12"
SAELENS_FORMAT = "autoenc-saelens"  # in the safetensors header and cfg.json's metadata: autoenc wrote it
# Hub names of the models autoenc loads offline (lm=smollm2 de-quantises the GGUF of this model).
HUB_NAMES = {"smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct"}


@dataclass
class SAELensSAE:
    """The tensors and cfg.json of an SAELens-format SAE."""

    architecture: str  # standard | topk | jumprelu
    W_enc: torch.Tensor  # (d_in, d_sae)
    b_enc: torch.Tensor  # (d_sae,)
    W_dec: torch.Tensor  # (d_sae, d_in)
    b_dec: torch.Tensor  # (d_in,)
    threshold: Optional[torch.Tensor] = None  # (d_sae,), jumprelu
    k: Optional[int] = None  # topk
    unit_norm_rows: bool = True  # False: top-k whose decoder norms were kept

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {"W_enc": self.W_enc, "b_enc": self.b_enc, "W_dec": self.W_dec, "b_dec": self.b_dec}
        if self.threshold is not None:
            named["threshold"] = self.threshold
        return {name: tensor.detach().float().contiguous() for name, tensor in named.items()}


def _sae_layers(model: Any) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    """The encoder's one linear layer and the decoder's weight (d_in, d_sae) and bias; a one-line refusal for
    any other model (deeper, convolutional, a non-ReLU code, a non-linear output)."""
    encoder = getattr(model, "encoder", None)
    affine = model.affine_decoder() if hasattr(model, "affine_decoder") else None
    one_layer = (
        isinstance(encoder, nn.Sequential)
        and len(encoder) == 2
        and isinstance(encoder[1], nn.Sequential)  # (a VAE's second module is its mean and log-variance layer)
        and isinstance(encoder[1][0], nn.Linear)
    )
    if not one_layer or affine is None:
        raise UserError(
            "format=saelens needs a sparse autoencoder: one linear encoder layer and one linear decoder layer "
            "(model=sparse_fc with no hidden layers)"
        )
    if model.code_activation != "relu":
        raise UserError(
            f"format=saelens needs a ReLU code (SAELens's encoders end in one); this run has "
            f"model.code_activation={model.code_activation}"
        )
    if not isinstance(model.output_activation, nn.Identity):
        raise UserError(
            "format=saelens needs a linear output (model.output_activation=linear): SAELens decodes without one; "
            f"this run's is {type(model.output_activation).__name__.lower()}"
        )
    return encoder[1][0], *affine


def _rule(model: Any) -> tuple[str, Any]:
    """The architecture the run's sparsity options give at inference, with its k or thresholds."""
    transform = model.code_transform
    rules = transform.inference_rules() if hasattr(transform, "inference_rules") else {}
    if len(rules) > 1:
        raise UserError(
            f"format=saelens takes one code rule at inference; this run has {len(rules)} ({', '.join(rules)})"
        )
    if not rules:
        return "standard", None
    (rule,) = rules.values()
    return ("topk", rule.k) if rule.k is not None else ("jumprelu", rule.threshold)


def fold(model: Any, normalisation: Any = None) -> SAELensSAE:
    """``model`` (a trained sparse autoencoder, evaluation mode) as SAELens tensors on raw inputs: the
    normalisation ``(x - shift) / divisor`` (a Normalisation or None), the input bias and the decoder's
    bias folded in; decoder rows at unit norm where that keeps the rule exact."""
    layer, weight, bias = _sae_layers(model)
    d_in = math.prod(model.input_shape)
    with torch.no_grad():
        divisor = torch.ones(d_in, dtype=torch.float64)
        shift = torch.zeros(d_in, dtype=torch.float64)
        if normalisation is not None:
            divisor = divisor * normalisation.divisor.double().flatten().expand(d_in)
            if normalisation.shift is not None:
                shift = normalisation.shift.double().flatten()
        input_bias = model.input_bias.double().flatten() if model.input_bias is not None else torch.zeros(d_in).double()
        w_enc, b_enc = layer.weight.double(), layer.bias.double()  # (d_sae, d_in), (d_sae,)
        w_dec, b_dec = weight.double(), bias.double()  # (d_in, d_sae), (d_in,)
        # Decode: x = divisor * (w_dec f + b_dec) + shift. Encode: w_enc ((x - shift) / divisor - input_bias)
        # + b_enc = (w_enc / divisor) (x - b_dec_raw) + b_enc + w_enc (b_dec - input_bias).
        b_dec_raw = divisor * b_dec + shift
        encoder_raw = (w_enc / divisor).t()  # (d_in, d_sae)
        b_enc_raw = b_enc + w_enc @ (b_dec - input_bias)
        decoder_raw = (w_dec * divisor[:, None]).t()  # (d_sae, d_in)
        architecture, setting = _rule(model)
        norms = decoder_raw.norm(dim=1).clamp_min(1e-30)
        uniform = bool(torch.allclose(norms, norms.mean().expand_as(norms), rtol=1e-6, atol=0))
        if architecture == "topk":  # one factor for every unit keeps the ranking exact; none where they differ
            scale = norms.mean().expand_as(norms) if uniform else torch.ones_like(norms)
        else:
            scale = norms
        threshold = setting.double() * scale if architecture == "jumprelu" else None
        return SAELensSAE(
            architecture,
            encoder_raw * scale,
            b_enc_raw * scale,
            decoder_raw / scale[:, None],
            b_dec_raw,
            threshold=threshold,
            k=setting if architecture == "topk" else None,
            unit_norm_rows=architecture != "topk" or uniform,
        )


def training_architecture(config: Any) -> str:
    """How the field names the run's training recipe (SAELens's metadata.training_architecture)."""
    names = list(config.sparsity)
    if "matryoshka" in names:
        return "matryoshka_batchtopk" if "batch_topk" in names else "matryoshka"
    for name, label in (("batch_topk", "batchtopk"), ("topk", "topk"), ("jumprelu", "jumprelu")):
        if name in names:
            return label
    return "standard"


def cache_metadata(data: Any) -> dict[str, Any]:
    """What SAELens and SAEBench read of the model and text (model_name, hook_name, context_size, ...), from
    the activation cache a run trained on; empty for other data."""
    if getattr(data, "name", None) != "activations":
        return {}
    from autoenc_cli.data.activation_cache import ActivationCache
    from autoenc_cli.errors import DataError

    try:
        cache = ActivationCache.open(Path(data.path))
    except DataError as error:  # moved or deleted: the weights need no cache, only these names do
        from autoenc_cli.artifacts.console import console

        console.print(f"note: {SAELENS_CONFIG} names no language model or context size: {error}", soft_wrap=True)
        return {"hook_name": data.hook, "hf_hook_name": data.hook} if data.hook else {}
    identity = cache.manifest.identity
    model = identity["model"]
    hook = data.hook or cache.manifest.hooks[0]
    return {
        "model_name": HUB_NAMES.get(model.get("source"), model.get("name")),
        "model_class_name": "AutoModelForCausalLM",
        "hook_name": hook,  # the module path (SAELens's Hugging Face models name hooks so; TransformerLens differs)
        "hf_hook_name": hook,
        "hook_head_index": None,
        "context_size": identity["context_size"],
        # Every context starts with the separator token (bos_id); that position is never cached.
        "prepend_bos": True,
        "sequence_separator_token": identity.get("bos_id"),
        "dataset_path": identity["text"].get("source"),
        "seqpos_slice": [1, None],
        "model_from_pretrained_kwargs": {},
    }


def saelens_config(sae: SAELensSAE, run: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    config = run.config
    d_in, d_sae = sae.W_enc.shape
    metadata = {
        "sae_lens_version": SAELENS_LAYOUT_VERSION,
        "sae_lens_training_version": None,
        **cache_metadata(config.data),
        "training_architecture": training_architecture(config),
        # of the exported checkpoint's epoch, on the validation split (None: an export of an export)
        "l0": metrics.get("l0"),
        "num_dead_features": round(metrics["dead_fraction"] * d_sae) if "dead_fraction" in metrics else None,
        "autoenc_format": SAELENS_FORMAT,
        "autoenc_folded": {
            "normalize": getattr(config.data, "normalize", "none"),  # applied to raw inputs by the weights
            "unit_norm_decoder_rows": sae.unit_norm_rows,
        },
    }
    architecture = {"architecture": sae.architecture}
    if sae.architecture == "topk":
        architecture.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    return {
        **architecture,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
    }
