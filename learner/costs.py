"""What a call will cost, estimated per token before it is made.

The prompt part is known exactly from the price sheet (USD per prompt token). The completion
part is learned per (cluster, model) from the costs calls revealed, expressed in
prompt-token-equivalents shared by every model of a cluster first: answers in a cluster take
about as many tokens whichever model writes them, so one model's bill tells what the others
would charge before they are ever called. A running mean of cost per call, by contrast, traps
a model: one long prompt makes it look expensive everywhere.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["completion_cost", "estimate_costs", "estimate_tokens", "price_per_token", "request_tokens"]


def estimate_tokens(text: str) -> int:
    """Tokens of a text, estimated from its length (about four characters a token)."""
    return max(1, (len(text) + 3) // 4)


def request_tokens(texts: Sequence[str]) -> int:
    """Prompt tokens of a chat request, one text per message: each message's estimate plus
    four tokens of chat framing (role and separators). What the service routes and prices by."""
    return sum(estimate_tokens(t) + 4 for t in texts)


def price_per_token(tokens: np.ndarray, costs: np.ndarray, quantile: float = 0.05) -> np.ndarray:
    """A price sheet read off billed costs: USD per prompt token of each model.

    tokens: (n,) prompt tokens; costs: (n, m) USD, NaN where a model was not called.
    A bill is prompt tokens times the price plus a non-negative completion part, so a low
    quantile of cost per prompt token is the price (the calls with the shortest answers).
    Returns (m,) float64 (0 for a model with no bills).
    """
    rate = np.asarray(costs, dtype=np.float64) / np.maximum(np.asarray(tokens, dtype=np.float64), 1.0)[:, None]
    out = np.zeros(rate.shape[1])
    for j in range(rate.shape[1]):
        col = rate[:, j][~np.isnan(rate[:, j])]
        if len(col):
            out[j] = float(np.quantile(col, quantile))
    return out


def completion_cost(
    per_token: np.ndarray,
    resid_sum: np.ndarray,
    count: np.ndarray,
    pseudo_count: float = 2.0,
) -> np.ndarray:
    """Expected completion cost (USD) of each model in each cluster: (k, m).

    per_token: (m,) prompt price; resid_sum: (k, m) summed billed cost minus the prompt part;
    count: (k, m) bills seen. A cluster's completion length in prompt-token-equivalents,
    rho_c = sum_m resid_sum[c, m] / sum_m count[c, m] * per_token[m], prices an unseen model;
    each model's own bills take over as they come (``pseudo_count`` bills of prior weight).
    """
    per_token = np.asarray(per_token, dtype=np.float64)
    resid_sum = np.asarray(resid_sum, dtype=np.float64)
    count = np.asarray(count, dtype=np.float64)
    denom = (count * per_token[None, :]).sum(axis=1)
    rho = np.where(denom > 0, resid_sum.sum(axis=1) / np.maximum(denom, 1e-300), 0.0)
    prior = np.maximum(rho, 0.0)[:, None] * per_token[None, :]
    return np.maximum((pseudo_count * prior + resid_sum) / (pseudo_count + count), 0.0)


def estimate_costs(tokens: float, per_token: np.ndarray, completion: np.ndarray) -> np.ndarray:
    """Cost of answering one prompt of ``tokens`` with each model: (m,) USD."""
    return tokens * np.asarray(per_token, dtype=np.float64) + np.asarray(completion, dtype=np.float64)
