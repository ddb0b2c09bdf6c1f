"""Map exceptions from Hydra, OmegaConf and autoenc to the one line a user needs to read."""

from __future__ import annotations

from typing import Optional

from autoenc_cli.errors import UserError


def _first_line(text: object) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else ""


def _raised_inside_config_libraries(error: BaseException) -> bool:
    """True when the innermost frame of the traceback belongs to hydra or omegaconf."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = traceback.tb_frame.f_code.co_filename.replace("\\", "/")
    return "/hydra/" in filename or "/omegaconf/" in filename


def one_line_or_none(error: BaseException) -> Optional[str]:
    """The one-line message for a user mistake, or None for an unexpected error (a bug)."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, OSError) and error.filename:  # e.g. an output folder that cannot be written
        return f"cannot write or read '{error.filename}': {error.strerror or error}"
    if isinstance(error, MissingConfigException) and error.options is not None and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        choices = ", ".join(sorted(error.options)) or "(none)"
        return f"{group}={option} is not an option; choose one of {choices}"
    if isinstance(error, OverrideParseException):
        return f"malformed override: {_first_line(error)}"
    if isinstance(error, (ValueError, TypeError, KeyError)) and _raised_inside_config_libraries(error):
        # Hydra sometimes rejects a malformed override with a plain ValueError while composing.
        return f"invalid override or config: {_first_line(error)}"
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        message = _first_line(error)
        cause = error.__cause__
        if cause is not None and _first_line(cause) and _first_line(cause) not in message:
            message = f"{message} {_first_line(cause)}"
        return message
    return None
