"""A job's bound on its run time: `timeout_seconds` in the request, or Replicate's `Cancel-After`
header on submission (a duration such as `90`, `45s`, `5m` or `1h30m`, from creation)."""

import math
import re

from shared.errors import ErrorCode, TesseraError
from shared.schemas import JobCreate

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
# The longest a job may run, as for timeout_seconds.
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600


def cancel_after_seconds(value: str) -> int:
    """Whole seconds (rounded up, at least 1) of a Cancel-After duration; invalid_request when
    it is not one."""
    text = value.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif text and _PART.sub("", text) == "":
        seconds = sum(float(number) * _UNIT_SECONDS[unit] for number, unit in _PART.findall(text))
    else:
        raise TesseraError(ErrorCode.invalid_request,
                           f"Cancel-After must be a duration such as 90, 45s, 5m or 1h30m, not "
                           f"{value!r}.")
    if not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise TesseraError(ErrorCode.invalid_request,
                           f"Cancel-After must be more than 0 and at most {MAX_TIMEOUT_SECONDS} "
                           "seconds.")
    return max(1, math.ceil(seconds))


def with_cancel_after(request: JobCreate, cancel_after: str | None) -> JobCreate:
    """The request bounded by its Cancel-After header too (the tighter bound wins)."""
    if cancel_after is None:
        return request
    seconds = cancel_after_seconds(cancel_after)
    if request.timeout_seconds is not None:
        seconds = min(seconds, request.timeout_seconds)
    return request.model_copy(update={"timeout_seconds": seconds})
