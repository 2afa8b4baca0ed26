"""What a kind's rule factory (`rules(ctx)` in its detector module, named by KindSpec.rules) gets and
gives: the settings, the city's clock and a baseline maker in; its fixed and learned rules out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from citywatch.detectors.baseline import LocalTime, SeasonalBaseline
from citywatch.section import Section

if TYPE_CHECKING:
    from citywatch.config import Settings
    from citywatch.detectors.base import Rule

S = TypeVar("S", bound=Section)


@dataclass
class KindRules:
    """A kind's rules, in evaluation order: fixed thresholds, then learned detectors (run only when
    `rules.learned.enabled`)."""

    fixed: list[Rule]
    learned: list[Rule] = field(default_factory=list)


class RuleContext:
    """The settings, the city's clock, and typed access to a kind's own settings sections."""

    def __init__(self, settings: Settings, clock: LocalTime) -> None:
        self.settings = settings
        self.clock = clock

    def section(self, cls: type[S]) -> S:
        """The kind's `rules.<kind>` section."""
        return self.settings.rules.section(cls)

    def learned(self, cls: type[S]) -> S:
        """One `rules.learned.<name>` parameter block."""
        return self.settings.rules.learned.section(cls)

    def baseline(self, field_name: str, min_spread: float, seasonal: bool = True,
                 min_count: int | None = None) -> SeasonalBaseline:
        """A per-device seasonal baseline on `field_name` with the configured learning parameters."""
        b = self.settings.rules.learned.baseline
        return SeasonalBaseline(field_name, self.clock, seasonal=seasonal, alpha=b.alpha,
                                min_count=b.min_count if min_count is None else min_count, clip=b.clip,
                                flagged_weight=b.flagged_weight, min_spread=min_spread)
