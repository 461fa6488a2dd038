"""Token counts as the router estimates them before a call: one estimate for every caller.

The service prices a request by ``request_tokens`` of its messages before it knows the
provider's usage report; the replay and ``simulate`` count the same way, so their decisions
are the service's. Costs themselves are estimated in ``learner.routing`` (prices from
configuration, completion lengths and bills learned per cluster).
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["estimate_tokens", "request_tokens"]


def estimate_tokens(text: str) -> int:
    """Tokens of a text, estimated from its length (about four characters a token)."""
    return max(1, (len(text) + 3) // 4)


def request_tokens(texts: Sequence[str]) -> int:
    """Prompt tokens of a chat request, one text per message: each message's estimate plus
    four tokens of chat framing (role and separators). What the service routes and prices by."""
    return sum(estimate_tokens(t) + 4 for t in texts)
