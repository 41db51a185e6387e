"""Schedules as pure functions of the optimizer step (0-based)."""

from collections.abc import Callable


def quadratic(step: int, final: float, T: int) -> float:
    """final * ((step+1)/T)^2 until step T-1, then final (the SPLADE / paper warm-up)."""
    return final * min(1.0, ((step + 1) / T) ** 2)


def linear(step: int, final: float, T: int) -> float:
    return final * min(1.0, (step + 1) / T)


def constant(step: int, final: float, T: int) -> float:
    return final


LAMBDA_SCHEDULES: dict[str, Callable[[int, float, int], float]] = {
    "quadratic": quadratic,
    "linear": linear,
    "constant": constant,
}


def lambda_at(step: int, schedule: str, lambda_d: float, T: int) -> float:
    return LAMBDA_SCHEDULES[schedule](step, lambda_d, T)


def threshold_at(step: int, schedule: str, t: float | None, t_start: float | None, T: int) -> float | None:
    """Mask threshold at `step`: constant t, or a straight ramp from t_start at step 0 to t at step T.

    A ramp from a high t_start lets documents keep many terms early and tightens the mask later.
    """
    if t is None or schedule == "constant":
        return t
    if schedule == "linear":
        start = t if t_start is None else t_start
        return start + (t - start) * min(1.0, step / T)
    raise ValueError(f"mask.schedule={schedule!r} is not one of: constant, linear")
