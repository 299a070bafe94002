"""The live canary's panels (docs/canary.md): the fleet's and the canary's T_bg side by side, how
many answers the canary moves and how early, and the latency of both for the same requests. They
close the overview dashboard, one row of four; the canary series carry a `canary` label besides
`upstream` (the fleet's) and `model_name`."""

from __future__ import annotations

from grafana.dashboards import RI, Panel, Query, _quantiles

F = 'upstream=~"$upstream", model_name=~"$model_name"'
UCM = "upstream, canary, model_name"


def canary_panels() -> list[Panel]:
    return [
        Panel(
            "Canary: T_bg of the fleet and of its canary",
            "Side by side for the same live traffic: the fleet's T_bg from its ordinary trials "
            "(tbg_temperature, max over replicas) and the canary's from its own replays compared "
            "with each other (tbg_canary_temperature; needs shadow.replays >= 2). Dashed: 95 % "
            "bounds. A canary at 0 with the fleet above it removes the randomness "
            "(docs/runbooks/decisions/ShouldWeSwitch.md).",
            "none",
            (
                Query(
                    f'max by (upstream, model_name) (tbg_temperature{{{F}, method="likelihood"}})',
                    "fleet {{upstream}} {{model_name}}",
                ),
                Query(
                    f"max by ({UCM}) (tbg_canary_temperature{{{F}}})",
                    "canary {{canary}} for {{upstream}} {{model_name}}",
                ),
                Query(
                    f"max by ({UCM}) (tbg_canary_temperature_upper{{{F}}})",
                    "canary upper {{canary}}",
                ),
            ),
            width=6,
            dashed_refs=("C",),
        ),
        Panel(
            "Canary: share of answers it would move",
            "Of the prompts replayed on the canary, the share whose first canary answer differs "
            "from the fleet's primary (the prompt is the unit; per replica the Wilson 95 % bounds "
            "are tbg_canary_moved_ratio_lower/_upper). What switching would change.",
            "percentunit",
            (
                Query(
                    f"sum by ({UCM}) (rate(tbg_canary_moved_trials_total{{{F}}}[{RI}]))\n/\n"
                    f"sum by ({UCM}) (rate(tbg_canary_trials_total{{{F}}}[{RI}]))",
                    "{{canary}} for {{upstream}} {{model_name}}",
                ),
            ),
            width=6,
        ),
        Panel(
            "Canary: where answers first diverge",
            "Token index at which a canary replay first leaves the fleet's primary (median and "
            "90th percentile): early divergences change whole answers, late ones their tail.",
            "short",
            _quantiles("tbg_canary_first_divergence_position_tokens", UCM, F, (0.5, 0.9)),
            width=6,
        ),
        Panel(
            "Canary: latency of the same requests",
            "Median latency of the fleet's primaries (side=primary) and of the canary's replays "
            "of those very requests (side=canary): the price of the switch.",
            "s",
            _quantiles("tbg_canary_latency_seconds", f"{UCM}, side", F, (0.5,)),
            width=6,
        ),
    ]
