"""Which primaries shadow replay may measure, and why the others are not measured.

Every request the Tap sees gets a `Verdict`: eligible with a decoding (`greedy`: temperature 0 or
`top_k: 1`, the traffic T_bg describes; `seeded`: temperature > 0 with an integer `seed`, which an
ideal stack reproduces exactly and which is reported apart, never in T_bg), or ineligible with a
reason from the fixed set `REASONS` (a bounded Prometheus label).

Hot path: a handful of dict lookups and comparisons. The verdicts are module constants, so judging
a request allocates nothing; the Tap then counts the verdict (proxy.shadow.coverage).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from proxy.shadow.config import Eligibility

DECODINGS: tuple[str, ...] = ("greedy", "seeded")
# Why a request is not measured, in the order /tbg and `tbg status` list them.
REASONS: tuple[str, ...] = (
    "not_greedy",  # sampled at temperature > 0 without a seed (or an absent temperature = 1)
    "n_gt_1",  # several choices asked for: `n` (or completions' `best_of`) above 1
    "seeded_off",  # seeded, but `shadow.eligibility.seeded` is off
    "not_replayable",  # nested too deeply to be sent again (proxy.shadow.wire.replayable)
    "route_unsupported",  # a route the shadow path cannot replay (embeddings, ...)
)
# Routes with a replay path; the forwarder only shows the Tap those it taps.
ROUTES: frozenset[str] = frozenset({"chat", "completions", "responses"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """Eligible (`decoding` set, `reason` None) or not (`reason` set, `decoding` None)."""

    decoding: str | None
    reason: str | None
    index: int  # position of `reason` in REASONS (ineligible), or of `decoding` in DECODINGS

    @property
    def eligible(self) -> bool:
        return self.decoding is not None


GREEDY: Final = Verdict("greedy", None, 0)
SEEDED: Final = Verdict("seeded", None, 1)
NOT_GREEDY: Final = Verdict(None, "not_greedy", REASONS.index("not_greedy"))
N_GT_1: Final = Verdict(None, "n_gt_1", REASONS.index("n_gt_1"))
SEEDED_OFF: Final = Verdict(None, "seeded_off", REASONS.index("seeded_off"))
NOT_REPLAYABLE: Final = Verdict(None, "not_replayable", REASONS.index("not_replayable"))
ROUTE_UNSUPPORTED: Final = Verdict(None, "route_unsupported", REASONS.index("route_unsupported"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def judge(route: str, body: Mapping[str, Any], rules: Eligibility) -> Verdict:
    """The verdict on one request body (whether it can be re-serialised is the Tap's next check).

    Order of the reasons: route, then the number of choices, then the decoding. Greedy wins over
    seeded: a temperature-0 request with a seed is greedy (the seed changes nothing there)."""
    if route not in ROUTES:
        return ROUTE_UNSUPPORTED
    n = body.get("n", 1)
    if n not in (1, None):
        return N_GT_1
    if route == "completions" and body.get("best_of", 1) not in (1, None):
        return N_GT_1
    temperature = body.get("temperature")
    if temperature is None:
        greedy = rules.missing_temperature_is_greedy
    else:
        greedy = _is_number(temperature) and temperature == 0
    if not greedy and rules.allow_top_k_1:
        greedy = body.get("top_k") == 1
    if greedy:
        return GREEDY
    # An absent temperature is OpenAI's default, 1: sampled, so seeded when a seed is given.
    if not _is_int(body.get("seed")):
        return NOT_GREEDY
    if temperature is not None and not (_is_number(temperature) and temperature > 0):
        return NOT_GREEDY  # not a temperature the upstream samples at: nothing to reproduce
    return SEEDED if rules.seeded else SEEDED_OFF
