"""The search space of ``autoenc tune``: ``tune.params`` parsed into Optuna distributions.

Written inline, ``tune.params='{k: int(4, 64, log), optimizer.lr: float(1e-4, 1e-2, log)}'``, one key per
argument, ``tune.params.optimizer.lr='float(1e-4, 1e-2, log)'``, or as a YAML file, ``tune.params=space.yaml``,
mapping each key to a spec, to a YAML list (a choice; a list or mapping among them is set whole, as the
override ``model.encoder=[{width: 256}]`` sets it), or to the long form
``{type: int|float, low: LOW, high: HIGH[, log: true][, step: N]}`` or ``{type: choice, choices: [...]}``.
The specs:

    int(LOW, HIGH[, log][, step=N])      whole numbers from LOW to HIGH, both included; log: log-uniform
    float(LOW, HIGH[, log][, step=X])    real numbers from LOW to HIGH
    choice(A, B, ...)                    one of the values (a number, a word, a group option, a [list], a {mapping})

A key is a config key as an override names it: ``k``, ``lam``, ``optimizer.lr``, ``sparsity.topk.k``,
``model.code_dim``, or a config group (``model: choice(fc, sparse_fc)``); ``sparsity.k`` and ``sparsity.lam``
are the ``k`` and ``lam`` shorthands (the one selected sparsity option's value).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from autoenc_cli.errors import UserError
from autoenc_cli.schema.root import SHORTHANDS

SYNTAX = "int(LOW, HIGH[, log][, step=N]), float(LOW, HIGH[, log][, step=X]) or choice(A, B, ...)"
EXAMPLE = "tune.params='{k: int(4, 64, log), optimizer.lr: float(1e-4, 1e-2, log)}'"
KEY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*|\[\d+\])*$")
# Keys of the command itself, never searched.
RESERVED = ("tune", "hydra", "resume", "output_root")


@dataclass(frozen=True)
class Param:
    """One searched key and its distribution."""

    key: str
    kind: str  # int | float | choice
    low: Any = None
    high: Any = None
    log: bool = False
    step: Any = None
    choices: tuple = field(default_factory=tuple)

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def text(self) -> str:
        """The spec in canonical form (how the study folder records it)."""
        if self.kind == "choice":
            return f"choice({', '.join(render(value) for value in self.choices)})"
        options = [render(self.low), render(self.high)] + (["log"] if self.log else [])
        options += [f"step={render(self.step)}"] if self.step is not None else []
        return f"{self.kind}({', '.join(options)})"

    def corners(self) -> list[Any]:
        """The values the config check must accept: both ends of a range, every choice."""
        return list(self.choices) if self.kind == "choice" else list(dict.fromkeys([self.low, self.high]))

    def override(self, value: Any) -> str:
        return f"{self.key}={render(value)}"


def render(value: Any) -> str:
    """A value as an override writes it (floats exactly, so the trial trains on the sampled value)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def parse_params(value: Optional[str], per_key: dict[str, str]) -> dict[str, Param]:
    """``tune.params`` (inline mapping or YAML file) and the ``tune.params.KEY=SPEC`` arguments."""
    entries: dict[str, Any] = {}
    text = (value or "").strip()
    if text.startswith("{"):
        if not text.endswith("}"):
            raise UserError(f"tune.params='{text}': an inline search space ends with '}}', e.g. {EXAMPLE}")
        for item in split_top_level(text[1:-1]):
            key, colon, spec = item.partition(":")
            if not colon or not spec.strip():
                raise UserError(f"tune.params: '{item}' is not KEY: SPEC; write e.g. {EXAMPLE}")
            entries[key.strip().strip("'\"")] = spec.strip()
    elif text:
        entries.update(read_space_file(text))
    entries.update(per_key)
    params: dict[str, Param] = {}
    for raw_key, spec in entries.items():
        param = parse_spec(normal_key(str(raw_key)), spec)
        if param.key in params:
            raise UserError(f"tune.params: {raw_key} and another key both name {param.key}; give it once")
        params[param.key] = param
    if not params:
        raise UserError(f"autoenc tune needs a search space, e.g. {EXAMPLE}")
    return params


def read_space_file(path_text: str) -> dict[str, Any]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise UserError(
            f"tune.params='{path_text}' is neither an inline search space {{KEY: SPEC, ...}} nor a YAML file; "
            f"write e.g. {EXAMPLE}"
        )
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"tune.params='{path_text}': cannot read the file ({str(error).splitlines()[0]})") from None
    if not isinstance(loaded, dict) or not loaded:
        raise UserError(f"tune.params='{path_text}' must map config keys to specs ({SYNTAX})")
    return loaded


def normal_key(key: str) -> str:
    """``sparsity.k`` (as the issue and users write it) is the ``k`` shorthand."""
    group, _, rest = key.partition(".")
    if rest in SHORTHANDS and SHORTHANDS[rest] == group:
        return rest
    if not KEY.match(key) or key.split(".")[0].split("[")[0] in RESERVED:
        raise UserError(f"tune.params: '{key}' is not a config key to search (e.g. k, optimizer.lr, model.code_dim)")
    return key


def parse_spec(key: str, spec: Any) -> Param:
    where = f"tune.params.{key}={spec!r}"
    if isinstance(spec, list):  # a YAML list: the choices
        return choice_param(key, tuple(map(flow, spec)), where)
    if isinstance(spec, dict):  # the long form: {type: float, low: 1e-4, high: 1e-2, log: true}
        spec = dict(spec)
        kind = spec.pop("type", None)
        if kind == "choice":
            choices = spec.pop("choices", ())
            if spec or not isinstance(choices, list):
                raise UserError(f"{where}: a choice mapping is {{type: choice, choices: [A, B, ...]}}")
            return choice_param(key, tuple(map(flow, choices)), where)
        if kind not in ("int", "float") or not {"low", "high"} <= set(spec) <= {"low", "high", "log", "step"}:
            raise UserError(
                f"{where}: a mapping spec is {{type: int|float, low, high[, log][, step]}} or "
                "{type: choice, choices: [...]}"
            )
        return range_param(key, kind, spec["low"], spec["high"], bool(spec.get("log")), spec.get("step"), where)
    if not isinstance(spec, str):
        raise UserError(f"{where}: a fixed value is an override (KEY=VALUE), not a search space; write {SYNTAX}")
    match = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", spec, flags=re.S)
    if not match or match.group(1) not in ("int", "float", "choice"):
        raise UserError(f"{where} is not a spec; write {SYNTAX}")
    kind, arguments = match.group(1), split_top_level(match.group(2))
    if kind == "choice":
        return choice_param(key, tuple(scalar(argument) for argument in arguments), where)
    if len(arguments) < 2:
        raise UserError(f"{where}: {kind}() needs LOW and HIGH; write {SYNTAX}")
    log, step = False, None
    for option in arguments[2:]:
        name, equals, setting = (part.strip() for part in option.partition("="))
        if name == "log" and (not equals or setting.lower() in ("true", "false")):
            log = not equals or setting.lower() == "true"
        elif name == "step" and equals:
            step = number(setting, kind, where)
        else:
            raise UserError(f"{where}: unknown option '{option}'; write {SYNTAX}")
    low, high = (number(argument, kind, where) for argument in arguments[:2])
    return range_param(key, kind, low, high, log, step, where)


def number(text: Any, kind: str, where: str) -> Any:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"{where}: '{text}' is not a number") from None
    if kind == "int":
        if not value.is_integer():
            raise UserError(f"{where}: '{text}' is not a whole number; use float(...) for real numbers")
        return int(value)
    return value


def range_param(key: str, kind: str, low: Any, high: Any, log: bool, step: Any, where: str) -> Param:
    low, high = number(low, kind, where), number(high, kind, where)
    step = None if step is None else number(step, kind, where)
    if low > high:
        raise UserError(f"{where}: LOW ({render(low)}) must not exceed HIGH ({render(high)})")
    if log and low <= 0:
        raise UserError(f"{where}: a log range needs LOW > 0 (got {render(low)})")
    if step is not None and step <= 0:
        raise UserError(f"{where}: step must be > 0 (got {render(step)})")
    if log and step not in (None, 1):
        raise UserError(f"{where}: log and step cannot be combined (Optuna samples one or the other)")
    return Param(key, kind, low, high, log, None if kind == "int" and step == 1 else step)


def choice_param(key: str, choices: tuple, where: str) -> Param:
    if not choices:
        raise UserError(f"{where}: choice() needs at least one value")
    for value in choices:
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise UserError(
                f"{where}: {value!r} is not a choice value (a number, a word, a group option, a list or a mapping)"
            )
    if len(set(map(render, choices))) < len(choices):
        raise UserError(f"{where}: a value is listed twice")
    return Param(key, "choice", choices=choices)


def flow(value: Any) -> Any:
    """A YAML list or mapping among the choices of a file, [{width: 256}, {width: 128}], as the override value
    that sets it (as an inline choice([{width: 256}, {width: 128}]) writes it); other values as they are."""
    if isinstance(value, (list, dict)):
        return override_text(value)
    return value


# Characters Hydra's override grammar reads in an unquoted value; any other makes a string quoted.
UNQUOTED = re.compile(r"[\w/\\+.$%*@?|:\- ]+")


def override_text(value: Any) -> str:
    """A value (nested lists and mappings included) in Hydra's override grammar."""
    if isinstance(value, list):
        return f"[{', '.join(override_text(item) for item in value)}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{override_text(key)}: {override_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, str) and (not UNQUOTED.fullmatch(value) or value != value.strip()):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return render(value)


def scalar(text: str) -> Any:
    """A choice as written: a number, true/false/null, or the text itself (a group option, a [list])."""
    if text[:1] in "[{":
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, (bool, int, float, str)) else text


def split_top_level(text: str) -> list[str]:
    """Split at the commas outside brackets and quotes; blank items (a trailing comma) are dropped."""
    items, depth, quote, current = [], 0, "", []
    for character in text:
        if quote:
            quote = "" if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character in "([{":
            depth += 1
        elif character in ")]}":
            depth -= 1
        elif character == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(character)
    items.append("".join(current).strip())
    return [item.strip("'\"") if item[:1] == item[-1:] and item[:1] in "'\"" else item for item in items if item]


# How many combinations of the other keys' corner values are tried for each corner value.
CORNER_COMBINATIONS = 16


def check_corners(params: dict[str, Param], base: list[str], check: Callable[[list[str]], None]) -> None:
    """Every end of every range (and every choice) must pass the config check together with some
    corner values of the other keys: a range the check refuses is found before any trial trains."""
    for key, param in params.items():
        others = [other for name, other in params.items() if name != key]
        for value in param.corners():
            first: Optional[UserError] = None
            for combination in itertools.islice(itertools.product(*(o.corners() for o in others)), CORNER_COMBINATIONS):
                overrides = [param.override(value), *(o.override(v) for o, v in zip(others, combination))]
                try:
                    check([*base, *overrides])
                    break
                except UserError as error:
                    first = first or error
            else:
                reached = param.override(value)
                raise UserError(
                    f"tune.params.{key}={param.text()} reaches {reached}, which the config check refuses: {first}"
                )
