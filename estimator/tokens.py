"""Token identities: the keys that `Run.tokens` and `Run.top_logprobs` hold.

The comparison (`compare`, `pair`) matches tokens across runs and finds a run's chosen token among
its alternatives by key, so distinct tokens must have distinct keys. Token *text* is not enough:
byte-level tokenisers split a multi-byte character into pieces that are not valid UTF-8 on their
own, and every such piece is shown as '\\ufffd'; matched by text, the chosen piece would be given
another piece's logprob. So a key is built from what identifies the token:

- its bytes, when the upstream reports them and the text is not the token's own (it holds the
  replacement character U+FFFD): OpenAI; the embedded reference. Bytes that are valid UTF-8 give
  the text itself; other bytes give ``BYTES_MARK + hex`` (U+FFFE is a noncharacter, so no text
  key holds it: `bytes_key` is one-to-one). Any other text is the strict decoding of the token's
  bytes, so equal texts mean equal bytes there and the text is the key (the usual case: keys
  read as tokens, and nothing is decoded per token);
- its id, when the upstream names tokens by id (vLLM ``return_tokens_as_token_ids``:
  "token_id:123"): those strings are distinct already;
- else its text, and then equal strings at one position are a detected *collision* (vLLM's chat
  bytes are the bytes of the replacement text, so they collide the same way; legacy completions
  key alternatives by text in a JSON object and keep one of them). `resolve_collisions` handles
  it explicitly and conservatively: the chosen token is the entry whose logprob equals the chosen
  token's reported logprob (the same number on the wire); when no entry of its string carries
  that logprob (the object kept another token's) or the chosen logprob is unknown, no entry keeps
  the chosen key, so the choice is left unscored (a tail choice: the node's likelihood is then
  conditional on the reported tokens, never built on another token's logprob). The other entries
  of a colliding string are renamed ``key + DUP_MARK + n`` (most likely first, so the same rank
  gets the same key in every run): they stay alternatives but never stand for the chosen token.
  Nothing is added or dropped. Every such position is counted (`Run.token_collisions`).

What text cannot tell apart stays a limit: two runs that choose *different* tokens with the same
text at one position look like an agreement there (the next positions usually differ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

from estimator.model import Run, TopLogprobs

REPLACEMENT = "\ufffd"  # the text of a token whose bytes are not valid UTF-8 on their own
BYTES_MARK = "\ufffe"  # prefix of the key of a token whose bytes are not valid UTF-8
DUP_MARK = "\ufffe#"  # separates a colliding string from its rank among the others


def bytes_key(raw: bytes) -> str:
    """A token's key from its bytes: the text when they are valid UTF-8, else a hex form."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return BYTES_MARK + raw.hex()
    return text if BYTES_MARK not in text else BYTES_MARK + raw.hex()


def as_bytes(value: object) -> bytes | None:
    """The ``bytes`` field of a logprob entry (a list of ints 0..255) as bytes; None when absent
    or not in that shape (then the entry is keyed by its text)."""
    if not isinstance(value, list) or not value:
        return None
    try:
        return bytes(value)
    except (TypeError, ValueError):  # not ints in 0..255
        return None


def entry_key(text: str, raw: object) -> str:
    """The key of one logprob entry (chosen token or alternative) from its text and its
    ``bytes`` field (see the module docstring)."""
    if REPLACEMENT not in text and BYTES_MARK not in text:
        return text
    b = as_bytes(raw)
    return text if b is None else bytes_key(b)


def _same(a: float, b: float) -> bool:
    """The same logprob on the wire (a chosen token's and its entry's are one number; a little
    slack for an upstream that rounds them differently)."""
    return abs(a - b) <= 1e-4 * max(1.0, abs(b))


def _nearest(idx: list[int], top: Sequence[tuple[str, float]], lp: float | None) -> int | None:
    """The entry among ``idx`` that carries the chosen token's logprob, if one does."""
    if lp is None:
        return None
    near = [i for i in idx if _same(top[i][1], lp)]
    return min(near, key=lambda i: abs(top[i][1] - lp)) if near else None


def resolve_collisions(
    chosen: str, chosen_logprob: float | None, top: Sequence[tuple[str, float]]
) -> tuple[TopLogprobs, bool]:
    """One position's alternatives with distinct keys, and whether a collision was found there
    (see the module docstring). ``top`` is most likely first; so is the result."""
    lp = chosen_logprob if chosen_logprob is not None and math.isfinite(chosen_logprob) else None
    have = dict(top)
    if len(have) == len(top):  # the usual case: no two alternatives share a key
        x = have.get(chosen)
        if x is None or lp is None or _same(x, lp):
            return tuple(top), False
        mismatch = True
    else:
        mine = [i for i, (t, _) in enumerate(top) if t == chosen]
        mismatch = lp is not None and bool(mine) and not any(_same(top[i][1], lp) for i in mine)
    keys = [t for t, _ in top]
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(keys):
        groups.setdefault(t, []).append(i)
    out = list(top)
    for t, idx in groups.items():
        if len(idx) < 2 and not (t == chosen and mismatch):
            continue
        # The chosen string's entry is the one with the chosen logprob (none: left unscored);
        # of any other string the most likely one keeps the key.
        keep = _nearest(idx, top, lp) if t == chosen else idx[0]
        n = 0
        for i in idx:
            if i != keep:
                n += 1
                out[i] = (f"{t}{DUP_MARK}{n}", top[i][1])
    return tuple(out), True


def resolve_run(run: Run) -> Run:
    """`resolve_collisions` at every position of a run keyed by text (e.g. runs stored before
    keys existed); a run without colliding keys is returned as it is."""
    top = run.top_logprobs
    if top is None:
        return run
    lps = run.logprobs
    fixed: list[TopLogprobs] = []
    hits = 0
    for s, alts in enumerate(top):
        r, hit = resolve_collisions(run.tokens[s], None if lps is None else lps[s], alts)
        fixed.append(r)
        hits += hit
    if not hits:
        return run
    return replace(run, top_logprobs=tuple(fixed), token_collisions=run.token_collisions + hits)
