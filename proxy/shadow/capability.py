"""What the shadow path learns about an upstream: whether it returns logprobs, per (upstream, model
as the client names it). The Worker learns it from its replays and reports each finding as a
`LogprobsLearned` outcome; the Aggregator keeps the table the Tap reads before augmenting a primary.
"""

from __future__ import annotations

from typing import Any

from proxy.shadow.config import ShadowConfig
from proxy.tap import RequestInfo

# Model names are client-chosen, so the tables are bounded (cleared when full: the next replays
# learn them again).
LogprobsKey = tuple[str, str]
LEARNED_LIMIT = 1024
# The Responses API is learned apart from chat on the same model: an upstream may serve logprobs
# on one and refuse them on the other (vLLM's gpt-oss models refuse them on /v1/responses).
_RESPONSES = "\x00responses"


def logprobs_key(request: RequestInfo) -> LogprobsKey:
    model = request.body.get("model")
    name = model if isinstance(model, str) else ""
    return request.upstream, name + _RESPONSES if request.route == "responses" else name


def remember(table: dict[Any, Any], key: Any, value: Any) -> None:
    """`table[key] = value`, keeping the table at most LEARNED_LIMIT entries."""
    if key not in table and len(table) >= LEARNED_LIMIT:
        table.clear()
    table[key] = value


class Capabilities:
    """Logprobs support per (upstream, model): absent = unknown (config "auto"); True once a replay
    came back with logprobs; False once it did not, or failed asking for them while a plain one
    worked. "yes"/"no" in the config fix it for every upstream."""

    def __init__(self, config: ShadowConfig) -> None:
        self._fixed = {"yes": True, "no": False}.get(config.logprobs)
        self._learned: dict[LogprobsKey, bool] = {}

    def logprobs(self, key: LogprobsKey) -> bool | None:
        if self._fixed is not None:
            return self._fixed
        return self._learned.get(key)

    def unknown(self, key: LogprobsKey) -> bool:
        """Still to be detected (only in "auto")."""
        return self._fixed is None and key not in self._learned

    def learn(self, key: LogprobsKey, supported: bool) -> None:
        remember(self._learned, key, supported)
