"""``[judge]`` and ``[shadow]``: the answer judge and shadow routing (docs/judge.md).

Both are off by default. Their checks (``check_judge``) run with the rest of the settings checks.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Callable

from service.settings_check import Section

if TYPE_CHECKING:
    from service.settings import Settings

__all__ = ["DEFAULT_PROMPT", "DEFAULT_SCORE_PATTERN", "JudgeSettings", "ShadowSettings", "check_judge"]

DEFAULT_PROMPT = (
    "You grade answers of an AI assistant. Read the question and the answer, then rate how well the "
    "answer serves the question (correct, complete, helpful, safe) from 0 (useless or wrong) to 10 "
    "(excellent).\n\nQuestion:\n{question}\n\nAnswer:\n{answer}\n\n"
    "Reply with one line: Score: <0-10>"
)
DEFAULT_SCORE_PATTERN = r"(?i)score\s*[:=]?\s*(\d+(?:\.\d+)?)"


class JudgeSettings(Section):
    """[judge]: a model that grades a sample of answers off the request path.

    The judge is a pool model (``model``) or a dedicated OpenAI-compatible endpoint (``base_url``,
    ``upstream_model``, ``api_key_env``, its own prices). Each grade is ``FeedbackGiven(kind="judge")``
    on the graded decision; each judge call is a decision record of purpose "judge".
    """

    enabled: bool = False
    model: str = ""  # a pool model as judge ([[models]] name); or, empty, the endpoint below
    base_url: str = ""  # a dedicated OpenAI-compatible endpoint (".../v1")
    upstream_model: str = ""  # the model name the endpoint expects
    api_key_env: str = ""
    price_in_per_mtok: float = 0.0  # the endpoint's prices (a pool judge bills at its pool prices)
    price_out_per_mtok: float = 0.0
    timeout_s: float = 30.0  # a judge call that takes longer fails (recorded, no grade)
    max_tokens: int = 16  # of the judge's reply
    prompt: str = DEFAULT_PROMPT  # with {question} (the last user message) and {answer}
    score_pattern: str = DEFAULT_SCORE_PATTERN  # a regex; its first group is the score
    score_max: float = 10.0  # the score divided by this is the reward in [0, 1]
    sample: float = 0.1  # share of fresh answers graded (0: only shadow pairs)
    budget_usd_per_day: float = 1.0  # judge calls stop for the UTC day once this is spent
    tenants: tuple[str, ...] = ()  # tenants whose answers may be graded; empty: every tenant ...
    private_tenants: tuple[str, ...] = ()  # ... but these: their prompts may not leave their providers
    queue_size: int = 1000  # background jobs (judge and shadow) waiting; when full, skipped and counted
    workers: int = 4  # background jobs run at once
    agree_at: float = 0.5  # a grade at or above this "agrees" with a thumbs-up (calibration report)


class ShadowSettings(Section):
    """[shadow]: a share of requests also sent, in the background, to a reference model, or
    decided again by a candidate snapshot (and sent to its model when it chooses another)."""

    enabled: bool = False
    reference: str = ""  # a pool model ([[models]] name): what the routed answer is compared with ...
    candidate: int | None = None  # ... or a stored snapshot's version: its choice is the comparison
    share: float = 0.0  # share of answered requests shadowed, for tenants without their own
    tenant_share: dict[str, float] = {}  # per tenant: {"acme" = 0.5}
    budget_usd_per_day: float = 1.0  # shadow calls stop for the UTC day once this is spent
    tenants: tuple[str, ...] = ()  # empty: every tenant (a tenant whose models exclude the reference never)


def check_judge(s: Settings, source: str, bad: Callable[[str, str], Exception]) -> None:
    """Values in range and names known; raises ``bad(key, message)``."""
    j, sh = s.judge, s.shadow
    names = {m.name for m in s.models}
    if j.enabled:
        if j.model and j.base_url:
            raise bad("judge.model", "set either a pool model or base_url, not both")
        if not j.model and not j.base_url and names:
            raise bad("judge.model", "names no judge: set a pool model or base_url")
        if j.model and names and j.model not in names:
            raise bad("judge.model", f"'{j.model}' is not in [[models]]")
        if "{answer}" not in j.prompt or "{question}" not in j.prompt:
            raise bad("judge.prompt", "must contain {question} and {answer}")
        try:
            if re.compile(j.score_pattern).groups < 1:
                raise bad("judge.score_pattern", "must have a group that captures the score")
        except re.error as exc:
            raise bad("judge.score_pattern", f"is not a regular expression: {exc}") from None
        if not (math.isfinite(j.score_max) and j.score_max > 0):
            raise bad("judge.score_max", "must be a finite number > 0")
    for key, value in (("judge.sample", j.sample), ("shadow.share", sh.share), ("judge.agree_at", j.agree_at),
                       *((f"shadow.tenant_share.{t}", v) for t, v in sh.tenant_share.items())):  # fmt: skip
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise bad(key, "must be in [0, 1]")
    for key, value in (("judge.budget_usd_per_day", j.budget_usd_per_day), ("judge.timeout_s", j.timeout_s),
                       ("shadow.budget_usd_per_day", sh.budget_usd_per_day),
                       ("judge.price_in_per_mtok", j.price_in_per_mtok),
                       ("judge.price_out_per_mtok", j.price_out_per_mtok)):  # fmt: skip
        if not (math.isfinite(value) and value >= 0):
            raise bad(key, "must be a finite number >= 0")
    for key, value in (("judge.queue_size", j.queue_size), ("judge.workers", j.workers),
                       ("judge.max_tokens", j.max_tokens)):  # fmt: skip
        if value < 1:
            raise bad(key, "must be >= 1")
    if sh.enabled:
        if sh.reference and sh.candidate is not None:
            raise bad("shadow.candidate", "set either shadow.reference (a pool model) or shadow.candidate "
                      "(a snapshot version), not both")  # fmt: skip
        if not sh.reference and sh.candidate is None:
            raise bad("shadow.reference", "names nothing to compare with: set shadow.reference (a pool model) "
                      "or shadow.candidate (a snapshot version)")  # fmt: skip
        if sh.candidate is not None and sh.candidate < 0:
            raise bad("shadow.candidate", "must be a snapshot version >= 0")
        if sh.reference and names and sh.reference not in names:
            raise bad("shadow.reference", f"'{sh.reference}' is not in [[models]]")
