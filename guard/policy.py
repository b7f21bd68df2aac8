"""What to do with a scored segment: annotate (score only), flag, or suppress."""
from __future__ import annotations

from dataclasses import dataclass

from guard.config import PolicyMode
from guard.errors import OptionsError
from guard.results import Verdict


@dataclass(frozen=True)
class Policy:
    mode: PolicyMode
    flag_threshold: float
    suppress_threshold: float

    def __post_init__(self):
        for name in ("flag_threshold", "suppress_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise OptionsError(f"{name} must be in [0, 1]; got {value}")

    def decide(self, score: float) -> Verdict:
        """annotate: always pass. flag: flag at or above the flag threshold. suppress: suppress at or
        above the suppress threshold, flag between the two."""
        if self.mode is PolicyMode.annotate:
            return Verdict.pass_
        if self.mode is PolicyMode.suppress and score >= self.suppress_threshold:
            return Verdict.suppress
        if score >= self.flag_threshold:
            return Verdict.flag
        return Verdict.pass_


def resolve(mode: PolicyMode | None, flag: float | None, suppress: float | None, *, default_mode: PolicyMode,
            config_flag: float | None, config_suppress: float | None, calibrated: dict[str, float]) -> Policy:
    """Request value, else configured value, else the calibrated default, for each knob."""
    flag_t = flag if flag is not None else config_flag if config_flag is not None else calibrated["flag"]
    sup_t = suppress if suppress is not None else config_suppress if config_suppress is not None \
        else calibrated["suppress"]
    return Policy(mode or default_mode, float(flag_t), float(sup_t))
