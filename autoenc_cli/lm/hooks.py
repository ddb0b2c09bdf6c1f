"""Hook points of a language model: any ``torch.nn.Module`` inside it, named by its dotted path
(``model.layers.15`` the residual stream after block 15 of a Llama, ``model.layers.15.mlp`` its MLP
output, ``transformer.h.6`` a GPT-2 block). Reading a hook (capture) and replacing its output
(splicing) are forward hooks on that module; nothing of the model is changed or copied."""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch

from autoenc_cli.errors import ConfigError


def module_at(model: torch.nn.Module, path: str, key: str = "lm.hooks") -> torch.nn.Module:
    """The submodule at dotted ``path``; a path that names none is refused with the closest names."""
    modules = dict(model.named_modules())
    if path and path in modules:
        return modules[path]
    close = difflib.get_close_matches(path, [name for name in modules if name], n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else f"e.g. {_examples(modules)}"
    raise ConfigError(key, path, f"a module path inside the model ({hint})", absolute=True)


def _examples(modules: dict[str, torch.nn.Module]) -> str:
    blocks = [name for name, module in modules.items() if isinstance(module, torch.nn.ModuleList)]
    if blocks:
        return f"{blocks[0]}.0 ... {blocks[0]}.{len(modules[blocks[0]]) - 1}"
    return ", ".join(list(modules)[1:4])


def main_output(output: Any) -> torch.Tensor:
    """A module's activation: the output itself, or the first element of the tuple a block returns."""
    tensor = output[0] if isinstance(output, (tuple, list)) else output
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 3:
        raise ConfigError(
            "lm.hooks",
            type(output).__name__,
            "a module whose output is a (batch, tokens, width) tensor (or a tuple starting with one)",
            absolute=True,
        )
    return tensor


def with_main_output(output: Any, tensor: torch.Tensor) -> Any:
    """``output`` with its activation replaced by ``tensor`` (the rest of a tuple kept)."""
    if isinstance(output, tuple):
        return (tensor, *output[1:])
    if isinstance(output, list):
        return [tensor, *output[1:]]
    return tensor


class ForwardStopped(Exception):
    """Raised inside the model once every captured hook has fired: the layers after them need not run."""


@contextmanager
def capturing(
    model: torch.nn.Module, hooks: Sequence[str], stop_early: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Inside: each forward pass fills the yielded dict with every hook's (batch, tokens, width)
    activation. With ``stop_early`` the pass ends as soon as all hooks have fired (run it through
    ``forward_until_captured``), so a capture costs only the layers up to the deepest hook."""
    captured: dict[str, torch.Tensor] = {}
    modules = {hook: module_at(model, hook) for hook in hooks}

    def reader(hook: str) -> Callable[..., None]:
        def read(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            captured[hook] = main_output(output).detach()
            if stop_early and len(captured) == len(modules):
                raise ForwardStopped

        return read

    handles = [module.register_forward_hook(reader(hook)) for hook, module in modules.items()]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def forward_until_captured(model: torch.nn.Module, captured: dict[str, torch.Tensor], **inputs: Any) -> None:
    """One forward pass inside ``capturing``: stops where the hooks do."""
    captured.clear()
    try:
        model(**inputs)
    except ForwardStopped:
        pass


@contextmanager
def spliced(model: torch.nn.Module, hook: str, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside: every forward pass continues from ``replace(activation)`` instead of the hook's output."""
    module = module_at(model, hook)

    def splice(module: torch.nn.Module, inputs: Any, output: Any) -> Any:
        return with_main_output(output, replace(main_output(output)))

    handle = module.register_forward_hook(splice)
    try:
        yield
    finally:
        handle.remove()
