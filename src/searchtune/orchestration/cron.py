"""KFP's cron expressions (robfig/cron): six fields, seconds first, checked before anything is sent."""

import re

from searchtune.errors import SearchtuneError

# robfig/cron (KFP's scheduler): second minute hour day-of-month month day-of-week.
_CRON_FIELDS = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"])}),
    ("day-of-week", 0, 6, {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}),
)
_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}
_GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")


def validate_cron(expression: str) -> str:
    """Check a KFP cron expression (6 fields, seconds first) and return it normalised.

    A 5-field (Unix) expression is refused with the corrected one in the message:
    KFP's parser would otherwise read its first field as seconds and run at the wrong times.

    Args:
        expression: e.g. ``0 0 3 * * 1`` (03:00 every Monday) or ``@daily``.
    """
    expression = " ".join(expression.split())
    if expression.startswith("@"):
        word, _, rest = expression.partition(" ")
        if (word in _CRON_DESCRIPTORS and not rest) or (word == "@every" and _GO_DURATION.match(rest)):
            return expression
        raise SearchtuneError(f"--schedule {expression!r}: unknown descriptor; use one of "
                              f"{', '.join(sorted(_CRON_DESCRIPTORS))} or '@every 24h'")
    fields = expression.split(" ")
    if len(fields) == 5:
        raise SearchtuneError(
            f"--schedule {expression!r} has 5 fields, but KFP's cron has 6 with seconds first "
            f"(second minute hour day-of-month month day-of-week): use '0 {expression}'"
        )
    if len(fields) != 6:
        raise SearchtuneError(
            f"--schedule {expression!r} has {len(fields)} fields; KFP's cron needs 6: "
            "second minute hour day-of-month month day-of-week, e.g. '0 0 3 * * *'"
        )
    for text, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        for part in text.split(","):
            problem = _cron_part_problem(part.lower(), name, low, high, names)
            if problem:
                raise SearchtuneError(f"--schedule {expression!r}: {name} field {text!r}: {problem}")
    return expression


def _cron_part_problem(part: str, name: str, low: int, high: int, names: dict[str, int]) -> str | None:
    span, has_step, step = part.partition("/")
    if has_step and not (step.isdigit() and int(step) > 0):
        return f"step {step!r} must be a positive number"
    if span in ("*", "?"):
        return None if span == "*" or name in ("day-of-month", "day-of-week") else "'?' only fits day fields"
    bounds = span.split("-")
    if len(bounds) > 2:
        return f"{span!r} is not a value or a range"
    values = []
    for bound in bounds:
        value = names.get(bound, int(bound) if bound.isdigit() else None)
        if value is None or not low <= value <= high:
            return f"{bound!r} is not in {low}-{high}"
        values.append(value)
    if len(values) == 2 and values[0] > values[1]:
        return f"range {span!r} runs backwards"
    return None
