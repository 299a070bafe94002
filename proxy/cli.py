"""`tbg` console script: a thin dispatcher; each subcommand owns its own argument parser."""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Sequence

# subcommand -> (module, help). Imported lazily so `tbg serve` never imports torch.
_COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("proxy.serve", "run the proxy in front of one or more upstreams"),
    "reference": ("reference.cli", "run the embedded reference upstream (SmolLM2 on CPU)"),
    "status": ("proxy.status", "what a running proxy measured: T_bg, interval, verdict, next step"),
    "demo": ("proxy.demo", "reference upstream + proxy + bounded load, live T_bg in the terminal"),
    "measure": ("measure.measure_cmd", "measure T_bg of an endpoint offline: report + plots"),
    "sweep": ("measure.sweep", "T_bg, throughput and latency vs load; a safe load level"),
}


def _usage() -> str:
    lines = ["usage: tbg <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in _COMMANDS.items()]
    lines += ["", "`tbg <command> --help` for the options of one command; `tbg --version`."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    if args[0] in {"-V", "--version"}:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"tbg {version('tbg-proxy')}")
        except PackageNotFoundError:  # running from a checkout that is not installed
            print("tbg (not installed)")
        return 0
    name, rest = args[0], args[1:]
    if name not in _COMMANDS:
        close = difflib.get_close_matches(name, list(_COMMANDS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"tbg: unknown command {name!r}{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(_COMMANDS[name][0])
    entry: Callable[[list[str]], int] = module.main
    return entry(rest)


if __name__ == "__main__":
    raise SystemExit(main())
