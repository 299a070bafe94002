"""The addresses of one upstream discovered from DNS, and which one a request goes to.

An upstream with `discovery.dns` is a set of pods behind one name (a Kubernetes headless
Service). Each address gets its own `proxy.h1.Endpoint` (connect to the address; Host header and
TLS SNI stay the name's, so certificates and virtual hosts see what the Service URL would give),
all through the process's one pool. A request goes to the address with the fewest of this
replica's requests in flight, ties broken round-robin; an address that refused a connection is
skipped for `down_seconds` (all of them down: the least recently refused is tried). Until the
first resolution, or when the name resolves to nothing, requests go to base_url as configured.

Each address carries a bounded `pod` label for /metrics: the first `max_pod_labels` addresses
(in address order) get their own, the rest share `other`; a label is freed when its address
leaves the set and goes to a pooled address still present, else to the next one to appear.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from proxy.h1 import Endpoint

OTHER_POD = "other"


def pod_of(address: str, port: int) -> str:
    """The pod key of an address: `10.0.0.7:8000`, `[fd00::7]:8000`."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def address_of(pod: str) -> tuple[str, int] | None:
    """Back from a pod key to (address, port); None unless it is an IP literal with a port."""
    host, sep, port = pod.rpartition(":")
    if not sep or not port.isdigit():
        return None
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, int(port)


def endpoint_at(base: Endpoint, address: str, port: int) -> Endpoint:
    """`base` (the name's Host header, TLS context and SNI) connecting to `address` instead."""
    return replace(base, host=address, port=port)


@dataclass(slots=True)
class Member:
    """One address of the set (mutable bookkeeping, event loop only)."""

    pod: str
    endpoint: Endpoint
    label: str  # the `pod` label value: the pod key, or OTHER_POD
    down_until: float = 0.0
    requests: int = 0  # requests sent to it (the per-pod counter on /metrics)


class EndpointSet:
    """The current addresses of one upstream. `load(pod)` reads this replica's requests in
    flight to an address (proxy.inflight.InFlight.pod)."""

    def __init__(
        self,
        upstream: str,
        base: Endpoint,
        *,
        load: Callable[[str], int],
        down_seconds: float,
        max_labels: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.base = base
        self._load = load
        self._down = down_seconds
        self._max_labels = max_labels
        self._clock = clock
        self._members: dict[str, Member] = {}
        self._next = 0  # round-robin start among equally loaded addresses
        self.pooled_requests = 0  # requests sent to addresses labelled `other`, ever
        self.resolved = False  # at least one resolution answered

    def __len__(self) -> int:
        return len(self._members)

    def members(self) -> tuple[Member, ...]:
        return tuple(self._members.values())

    def pods(self) -> tuple[str, ...]:
        return tuple(self._members)

    def get(self, pod: str) -> Member | None:
        return self._members.get(pod)

    def update(self, addresses: Iterable[tuple[str, int]]) -> tuple[list[Member], list[Member]]:
        """Make the set the resolved (address, port) pairs; returns (added, removed). Members
        that stay keep their label, counters and down time."""
        wanted = {pod_of(a, p): (a, p) for a, p in sorted(set(addresses))}
        removed = [m for pod, m in self._members.items() if pod not in wanted]
        for member in removed:
            del self._members[member.pod]
        labelled = sum(1 for m in self._members.values() if m.label != OTHER_POD)
        for member in self._members.values():  # freed labels go to pooled pods first
            if labelled >= self._max_labels:
                break
            if member.label == OTHER_POD:
                member.label = member.pod
                labelled += 1
        added = []
        for pod, (address, port) in wanted.items():
            if pod in self._members:
                continue
            label = pod if labelled < self._max_labels else OTHER_POD
            labelled += label != OTHER_POD
            member = Member(pod, endpoint_at(self.base, address, port), label)
            self._members[pod] = member
            added.append(member)
        self.resolved = True
        return added, removed

    def pick(self, avoid: str | None = None) -> Member | None:
        """The address for the next request: fewest in flight among those not down (ties:
        round-robin), `avoid` left out when another exists; None when the set is empty."""
        members = [m for m in self._members.values() if m.pod != avoid] or list(
            self._members.values()
        )
        if not members:
            return None
        now = self._clock()
        up = [m for m in members if m.down_until <= now]
        if not up:  # every address refused lately: try the one refused longest ago
            return min(members, key=lambda m: m.down_until)
        start = self._next % len(up)
        self._next += 1
        order = up[start:] + up[:start]
        return min(order, key=lambda m: self._load(m.pod))  # min keeps the first of equals

    def sent(self, member: Member) -> None:
        member.requests += 1
        if member.label == OTHER_POD:
            self.pooled_requests += 1

    def refused(self, member: Member) -> None:
        """The address refused a connection: skip it for `down_seconds`."""
        member.down_until = self._clock() + self._down

    def is_down(self, member: Member) -> bool:
        return member.down_until > self._clock()
