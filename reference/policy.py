"""Decode policies: how one row of logits becomes the next token, per serving mode.

Every policy returns the chosen token and the log-probabilities it *reports* on the wire:
- greedy (modes `batched`, `serial`): argmax z; reports log_softmax(z) (vLLM raw_logprobs);
- thermostat(T): temperature-0 requests sample softmax(z/T) with a fresh seed; reports the raw
  log_softmax(z), so an observer sees exactly what a deterministic stack would report;
- noise(σ): z' = z + σ·ε with ε ~ N(0, I) fresh per position; greedy on z'; reports
  log_softmax(z'): implementation noise shows up in reported logprobs, as on a real stack.
Requests with temperature > 0 are sampled from softmax(z/t) (after top-k/top-p) in every mode,
with z the noisy logits in `noise` mode; reported logprobs as above.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

GREEDY_BELOW = 1e-5  # temperatures below this are greedy, as in vLLM


@dataclass(frozen=True)
class SamplingParams:
    """What a request asks of the decoder (already validated)."""

    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None = logprobs not requested

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


@dataclass(frozen=True)
class Choice:
    """A decode decision: the token and the reported log-probabilities (float32, vocab-sized)."""

    token_id: int
    logprobs: torch.Tensor


class DecodePolicy(Protocol):
    """The extension point per mode. Called in the worker thread, one row at a time."""

    @property
    def name(self) -> str: ...

    def choose(
        self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
    ) -> Choice: ...


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded when the request gives a seed, otherwise freshly random."""
    import torch

    gen = torch.Generator(device="cpu")
    gen.manual_seed(secrets.randbits(63) if seed is None else seed)
    return gen


def sample(
    logits: torch.Tensor,
    temperature: float,
    generator: torch.Generator,
    top_p: float = 1.0,
    top_k: int = 0,
) -> int:
    """One draw from softmax(logits / temperature), restricted by top-k then top-p."""
    import torch

    scaled = logits.float() / temperature
    if 0 < top_k < scaled.numel():
        kth = torch.topk(scaled, top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cumulative = torch.cumsum(probs, dim=-1)
        drop = cumulative - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(0, order, sorted_logits)
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


def _pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    if params.greedy:
        return int(logits.argmax().item())
    return sample(logits, params.temperature, generator, params.top_p, params.top_k)


class GreedyPolicy:
    """Deterministic given the logits: argmax at temperature 0."""

    name = "greedy"

    def choose(
        self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
    ) -> Choice:
        import torch

        z = logits.float()
        return Choice(_pick(z, params, generator), torch.log_softmax(z, dim=-1))


@dataclass(frozen=True)
class ThermostatPolicy:
    """An ideal Boltzmann system: temperature-0 requests are served at temperature T."""

    temperature: float
    name: str = "thermostat"

    def choose(
        self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
    ) -> Choice:
        import torch

        z = logits.float()
        if params.greedy:
            token = sample(z, self.temperature, generator)
        else:
            token = _pick(z, params, generator)
        return Choice(token, torch.log_softmax(z, dim=-1))


@dataclass(frozen=True)
class NoisePolicy:
    """Gaussian logit noise of known σ before the pick; reports the noisy log-probabilities."""

    sigma: float
    name: str = "noise"

    def choose(
        self, logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
    ) -> Choice:
        import torch

        z = logits.float()
        noise_gen = make_generator(None)  # fresh noise, independent of any request seed
        noisy = z + self.sigma * torch.randn(z.shape, generator=noise_gen, dtype=z.dtype)
        return Choice(_pick(noisy, params, generator), torch.log_softmax(noisy, dim=-1))


def policy_for(mode: str, temperature: float | None, sigma: float | None) -> DecodePolicy:
    """The decode policy of a serving mode (`batched` and `serial` are both greedy)."""
    if mode in {"batched", "serial"}:
        return GreedyPolicy()
    if mode == "thermostat":
        if temperature is None or temperature <= 0:
            raise ValueError("mode thermostat needs --temperature T > 0")
        return ThermostatPolicy(temperature)
    if mode == "noise":
        if sigma is None or sigma < 0:
            raise ValueError("mode noise needs --sigma S >= 0")
        return NoisePolicy(sigma)
    raise ValueError(f"unknown mode {mode!r}")
