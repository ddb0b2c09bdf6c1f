"""One training epoch of several runs as one batched model.

The members' networks have the same structure; their parameters and buffers are stacked along a new
leading dimension, ``torch.func.vmap`` runs the forward pass and the objective of every member at once
(one batched matrix product per layer) and one backward pass computes every member's gradients. What
members may set each their own:

- anything outside the network's step: seed (their own batch order and noise), noise, schedule and
  learning-rate policy, epochs, logging, figures;
- the optimizer's settings (rate, decay, betas: the members' parameters, views of the stack, step with
  their own settings and state in an optimizer built as the member's own was; an optimizer whose
  update is elementwise, as its config declares, computes each element alike however parameters are
  grouped, so a member's update is its separate run's, bit for bit);
- a module's ``member_fields`` (top-k's k, a penalty's weight): numbers passed in as 0-d tensors.

Everything else must be equal, which ``stack_signature`` checks from the modules themselves, so a
difference that is not a member field (a Python attribute, a shape) puts runs in different stacks
instead of being silently taken from the first member. Between epochs every member holds its own
tensors again: validation, checkpoints and callbacks are the ordinary per-run code.

A stack the engine cannot run (building its model or optimizer raises, or its first forward and
backward pass does) changes nothing of its members: ``StackingRefused`` names the option, and the
caller trains them alone.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn
from torch.func import functional_call, vmap

from autoenc_cli.data.tensors import epoch_order, in_memory
from autoenc_cli.errors import TrainingInterrupted
from autoenc_cli.registry import REGISTRY
from autoenc_cli.sparsity.base import SparsityStack
from autoenc_cli.training.loop import Trainer


def member_fields(module: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(type(module), "member_fields", ()))


def can_stack(trainer: Trainer) -> Optional[str]:
    """Why this run's epochs cannot join a stack (None: they can)."""
    parts = trainer.parts
    if parts.world.is_distributed:
        return "distributed training"
    if parts.config.trainer.compile:
        return "trainer.compile=true"
    if trainer.scaler.is_enabled():
        return "trainer.precision=fp16 (a gradient scaler per run)"
    if not in_memory(parts.data.train):
        return "memory-mapped data"
    if parts.data.binary_training_draws:
        return "data.binarize=dynamic (a binary draw per run)"
    if parts.model.variational:
        return f"model={parts.config.model.name} (its code is a random draw per run)"
    return _optimizer_refusal(trainer)


def _optimizer_refusal(trainer: Trainer) -> Optional[str]:
    """Why the engine cannot step this run's optimizer on a stack of members (None: it can)."""
    config, optimizer = trainer.parts.config.optimizer, trainer.optimizer
    if not getattr(type(config), "elementwise_update", False):
        return f"optimizer={config.name}: its update is not declared elementwise (OptimizerConfig.elementwise_update)"
    if optimizer is not None and len(optimizer.param_groups) != 1:
        return f"optimizer={config.name}: {len(optimizer.param_groups)} parameter groups"
    return None


class StackingRefused(Exception):
    """The engine could not run a stack; nothing of its members changed, and they can train alone."""

    def __init__(self, option: str, error: BaseException) -> None:
        why = (str(error).strip().splitlines() or [""])[0]
        why = why if len(why) <= 160 else why[:157] + "..."
        super().__init__(f"the stacked engine cannot run {option} ({type(error).__name__}: {why})")


def _attributes(module: nn.Module) -> tuple:
    skip = {"training", *member_fields(module)}
    return tuple(sorted((key, repr(value)) for key, value in vars(module).items() if key[0] != "_" and key not in skip))


def _optimizer_steps(optimizer: torch.optim.Optimizer) -> float:
    for state in optimizer.state.values():
        return float(state["step"]) if "step" in state else 0.0
    return 0.0


def stack_signature(trainer: Trainer) -> tuple:
    """Runs whose next epochs may be stacked have equal signatures: the same phase, position in it and
    step counts, data, batch size, precision, loss, and networks equal in structure, shapes and every
    attribute but the modules' member fields."""
    network, parts = trainer.network, trainer.parts
    return (
        trainer.phase_index,
        parts.phases[trainer.phase_index].name,
        trainer.step_in_epoch,
        trainer.global_step,  # so step counters that modules keep (AuxK's) agree
        type(trainer.optimizer).__qualname__,
        _optimizer_steps(trainer.optimizer),  # a stacked optimizer state has one step count
        id(parts.data.train.images),
        parts.config.data.batch_size,
        str(trainer.autocast_dtype),
        type(trainer.objective.reconstruction).__qualname__,
        tuple((name, type(module).__qualname__, _attributes(module)) for name, module in network.named_modules()),
        tuple((name, tuple(p.shape), str(p.dtype), p.requires_grad) for name, p in network.named_parameters()),
        tuple((name, tuple(b.shape), str(b.dtype)) for name, b in network.named_buffers()),
    )


class StepLoss(nn.Module):
    """A member's training step as one module call (so ``functional_call`` swaps its tensors throughout,
    including in penalties that decode codes of their own): the objective's total loss."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.network = trainer.network
        self.objective = trainer.objective

    def forward(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.objective(self.network(inputs), target).total


@contextmanager
def attributes_set(settings: list[tuple[nn.Module, str, Any]]) -> Iterator[None]:
    saved = [(module, name, module.__dict__.get(name, _ABSENT)) for module, name, _ in settings]
    for module, name, value in settings:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            if value is _ABSENT:
                delattr(module, name)
            else:
                setattr(module, name, value)


_ABSENT = object()


class StackedEpoch:
    """Train one epoch of ``trainers`` (equal ``stack_signature``s) together.

    ``run`` returns each member's outcome of the epoch: its mean training loss, or its error (divergence,
    interruption), as ``Trainer.train_epoch`` returns or raises it. It raises ``StackingRefused``
    when building the stack or its first step fails: until that step's end only the stack's own tensors
    change, and ``undo`` puts back what the members had (their tensors, generators, host mirrors).
    """

    def __init__(self, trainers: list[Trainer]) -> None:
        # Members with equal optimizer settings next to each other: they step as one slice of the stack.
        self.trainers = sorted(trainers, key=_settings)
        self.template = self.trainers[0].network  # the network the batched step runs, on every member's tensors
        self.step_module = StepLoss(self.trainers[0])
        self.errors: dict[int, BaseException] = {}
        self.undo: Optional[list[Callable[[], Any]]] = None  # see the class's docstring; None once committed
        self.building: Optional[str] = None  # the option whose part of the stack is being built

    # -- stacking ---------------------------------------------------------------------------------------
    def _stack(self) -> None:
        networks = [trainer.network for trainer in self.trainers]
        members = [dict(network.named_parameters()) for network in networks]
        self.parameters: dict[str, torch.Tensor] = {}
        for name, parameter in self.template.named_parameters():
            stacked = torch.stack([member[name].detach() for member in members])
            self.parameters[name] = stacked.requires_grad_(parameter.requires_grad)
            for index, member in enumerate(members):
                self.undo.append(partial(setattr, member[name], "data", member[name].data))
                member[name].data = stacked.data[index]  # a view: per-member code (after_step) sees the stack
        self.buffers: dict[str, torch.Tensor] = {}
        for name, _ in self.template.named_buffers():
            owners = [_owner(network, name) for network in networks]
            stacked = torch.stack([module._buffers[leaf] for module, leaf in owners])
            self.buffers[name] = stacked
            for index, (module, leaf) in enumerate(owners):
                self.undo.append(partial(module._buffers.__setitem__, leaf, module._buffers[leaf]))
                module._buffers[leaf] = stacked[index]
        self.mirrors = [  # modules that mirror device state on the host, with their buffers, stacked
            (module, {leaf: self.buffers[f"{path}.{leaf}" if path else leaf] for leaf in module._buffers})
            for path, module in self.template.named_modules()
            if hasattr(module, "begin_stacked")
        ]
        for module, buffers in self.mirrors:
            self.undo.append(module.end_stacked)
            module.begin_stacked(buffers)
        self._member_values(networks)
        self.trained = [name for name, stacked in self.parameters.items() if stacked.requires_grad]
        self.member_parameters = [dict(network.named_parameters()) for network in networks]
        self.building = f"optimizer={self.trainers[0].parts.config.optimizer.name}"
        self._stack_optimizers()
        self.building = None

    def _rewind(self) -> None:
        """The members as they were at the start of the epoch (the stack changed nothing of theirs yet)."""
        for undo in reversed(self.undo or []):
            undo()
        self.undo = None

    def _option_of(self, error: BaseException) -> str:
        """The option whose code raised ``error``: the one being built, or the innermost module of the
        network or loss in its traceback (``sparsity=NAME`` for a sparsity option's modules)."""
        if self.building:
            return self.building
        config = self.trainers[0].parts.config
        options = {id(module): f"model={config.model.name}" for module in self.template.modules()}
        for module in self.template.modules():
            if isinstance(module, SparsityStack):
                for name, option in module.members.items():
                    options.update((id(part), f"sparsity={name}") for part in option.modules())
        options[id(self.trainers[0].objective.reconstruction)] = f"loss={config.loss.name}"
        found = [options.get(id(frame.f_locals.get("self"))) for frame, _ in traceback.walk_tb(error.__traceback__)]
        return next((option for option in reversed(found) if option), f"model={config.model.name}")

    def _member_values(self, networks: list[nn.Module]) -> None:
        """Each member field as a tensor of the members' values (the vmapped step gives each member its own
        as a 0-d tensor of the network's dtype, which acts as the number would), and per module the
        largest value of each (a bound for shapes, such as how many entries a top-k must rank)."""
        dtype, device = next(self.template.parameters()).dtype, self.trainers[0].parts.device
        self.slots, self.member_values, self.bounds = [], [], []
        for path, module in self.template.named_modules():
            fields = member_fields(module)
            values = {field: [getattr(network.get_submodule(path), field) for network in networks] for field in fields}
            for field in fields:
                if len(set(values[field])) == 1:
                    continue  # equal in every member: the template's own number serves all (the faster path)
                self.slots.append((module, field))
                self.member_values.append(torch.tensor([float(v) for v in values[field]], dtype=dtype, device=device))
            varying = {field: max(values[field]) for field in fields if len(set(values[field])) > 1}
            if varying:
                self.bounds.append((module, "largest", varying))

    def _after_step(self) -> None:
        for module, buffers in self.mirrors:
            module.after_stacked_step(buffers)

    def _unstack(self) -> None:
        """Every member holds its own tensors again: weights, buffers and optimizer state."""
        self._unstack_optimizers()
        for module, _ in self.mirrors:
            module.end_stacked()
        for index, trainer in enumerate(self.trainers):
            network = trainer.network
            for name, parameter in self.member_parameters[index].items():
                parameter.data = self.parameters[name].data[index].clone()
                parameter.grad = None
            for name, stacked in self.buffers.items():
                module, leaf = _owner(network, name)
                module._buffers[leaf] = stacked[index].clone()

    # -- the epoch --------------------------------------------------------------------------------------
    def run(self) -> dict[Trainer, float | BaseException]:
        trainers = self.trainers
        first = trainers[0]
        self.undo = []
        for trainer in trainers:
            trainer.network.train()
            trainer.epoch_batch_state = trainer.batch_generator.get_state()
            self.undo.append(partial(trainer.batch_generator.set_state, trainer.epoch_batch_state))
            self.undo.append(partial(trainer.noise_generator.set_state, trainer.noise_generator.get_state()))
        split, batch_size = first.parts.data.train, first.parts.config.data.batch_size
        orders = torch.stack([epoch_order(split, trainer.batch_generator) for trainer in trainers])
        try:
            self._stack()
            self._steps(orders, split.images, batch_size)
        except BaseException as error:
            if self.undo is None:  # committed: the members' own failure (or an interruption)
                self._unstack()
                raise
            self._rewind()
            if isinstance(error, Exception):
                raise StackingRefused(self._option_of(error), error) from error
            raise
        self._unstack()
        outcomes: dict[Trainer, float | BaseException] = {}
        for index, trainer in enumerate(trainers):
            try:
                outcomes[trainer] = self.errors.get(index) or trainer.end_train_epoch()
            except Exception as error:  # noqa: BLE001 - a member's divergence is its own
                outcomes[trainer] = error
        return outcomes

    def _loss_function(self) -> Callable:
        names = list(self.parameters) + list(self.buffers)

        def member_loss(tensors: list, values: list, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            prefixed = {f"network.{name}": tensor for name, tensor in zip(names, tensors)}
            settings = [(module, field, value) for (module, field), value in zip(self.slots, values)]
            with attributes_set(settings + self.bounds):
                return functional_call(self.step_module, prefixed, (inputs, target))

        return vmap(member_loss, randomness="error")

    def _steps(self, orders: torch.Tensor, images: torch.Tensor, batch_size: int) -> None:
        trainers, first = self.trainers, self.trainers[0]
        loss_of = self._loss_function()
        noisy = any(trainer.parts.noise.active for trainer in trainers)
        augmented = any(trainer.parts.augment.active for trainer in trainers)
        running = torch.stack([trainer.running_loss for trainer in trainers]).clone()
        for index, trainer in enumerate(trainers):  # views: one add per step sums every member's loss
            self.undo.append(partial(setattr, trainer, "running_loss", trainer.running_loss))
            trainer.running_loss = running[index]
        count = orders.shape[1]
        for start in range(first.step_in_epoch * batch_size, count, batch_size):
            clean = images[orders[:, start : start + batch_size]]
            if augmented:  # each member from its own generator, in the order a run alone draws (then noise)
                clean = torch.stack([t.parts.augment(clean[i], t.noise_generator) for i, t in enumerate(trainers)])
            inputs = clean
            if noisy:
                inputs = torch.stack([t.parts.noise(clean[i], t.noise_generator) for i, t in enumerate(trainers)])
            with first.autocast():
                totals = loss_of([*self.parameters.values(), *self.buffers.values()], self.member_values, inputs, clean)
            for name in self.trained:
                self.parameters[name].grad = None
            totals.sum().backward()
            self._optimizer_step()
            self._after_step()
            for trainer in trainers:  # constraints on the weights, per member (on its views of the stack)
                trainer.network.after_step()
            self.undo = None  # a step done: from here on the members' counters and events move on
            running += totals.detach()
            for index, trainer in enumerate(trainers):
                try:
                    trainer.count_step(clean.shape[1])
                except Exception as error:  # noqa: BLE001 - its divergence or interruption; the others go on
                    self.errors.setdefault(index, error)
            if any(trainer.stop_requested for trainer in trainers):  # every member stops at this step
                for index, trainer in enumerate(trainers):
                    self.errors.setdefault(index, TrainingInterrupted(f"{trainer.stop_requested} {trainer.where}"))
                break
        for index, trainer in enumerate(trainers):
            trainer.running_loss = running[index].clone()

    def _stack_optimizers(self) -> None:
        """One optimizer of the members' kind per run of consecutive members with equal settings (the
        stack is ordered so equal settings sit together), stepping their slices of the stack with their
        optimizers' states stacked alike: one fused kernel per tensor and setting, each element updated
        as the member's own optimizer would update it."""
        self.optimizers: list[tuple[torch.optim.Optimizer, int, int]] = []
        start = 0
        for stop in range(1, len(self.trainers) + 1):
            if stop < len(self.trainers) and _settings(self.trainers[stop]) == _settings(self.trainers[start]):
                continue
            slices = [self.parameters[name].detach()[start:stop] for name in self.trained]
            own = self.trainers[start]
            optimizer = REGISTRY.build(own.parts.config.optimizer, slices)  # built as the member's own was
            optimizer.param_groups[0].update(_group_settings(own.optimizer))  # with its settings now (a schedule's lr)
            for name, stacked in zip(self.trained, slices):
                states = [self._member_state(index, name) for index in range(start, stop)]
                if states[0]:
                    optimizer.state[stacked] = {key: _stacked([state[key] for state in states]) for key in states[0]}
            self.optimizers.append((optimizer, start, stop))
            start = stop

    def _member_state(self, index: int, name: str) -> dict:
        return self.trainers[index].optimizer.state.get(self.member_parameters[index][name], {})

    def _optimizer_step(self) -> None:
        for optimizer, start, stop in self.optimizers:
            for name, stacked in zip(self.trained, optimizer.param_groups[0]["params"]):
                stacked.grad = self.parameters[name].grad.detach()[start:stop]
            optimizer.step()

    def _unstack_optimizers(self) -> None:
        """Each member's own optimizer gets its slice of the state back."""
        for optimizer, start, stop in self.optimizers:
            for name, stacked in zip(self.trained, optimizer.param_groups[0]["params"]):
                state = optimizer.state.get(stacked)
                for index in range(start, stop):
                    if state:
                        member = self.trainers[index].optimizer
                        member.state[self.member_parameters[index][name]] = {
                            key: _member_slice(value, index - start) for key, value in state.items()
                        }


def _group_settings(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {key: value for key, value in optimizer.param_groups[0].items() if key != "params"}


def _settings(trainer: Trainer) -> str:
    optimizer = trainer.optimizer
    return f"{type(optimizer).__qualname__} {sorted(_group_settings(optimizer).items())!r}"


def _member_slice(value: Any, offset: int) -> Any:
    """A member's own copy of a stacked state entry (the inverse of ``_stacked``)."""
    if isinstance(value, torch.Tensor):
        return value.clone() if value.dim() == 0 else value[offset].clone()
    return value


def _stacked(values: list) -> Any:
    """A state entry of the members, stacked: a tensor per member (a moment), or their common scalar (Adam's step)."""
    if isinstance(values[0], torch.Tensor) and values[0].dim() > 0:
        return torch.stack(values)
    return values[0].clone() if isinstance(values[0], torch.Tensor) else values[0]


def _owner(network: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    return (network.get_submodule(path) if path else network), leaf
