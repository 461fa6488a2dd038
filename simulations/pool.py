"""A simulated model pool and prompt topics, so that routing and learning run with no keys.

Each simulated model has prices, a latency, a verbosity and a quality per topic; simulated
users judge answers by that quality. The service serves this pool when no provider is
configured; demos, tests and offline simulations use the same definitions.
"""

from __future__ import annotations

import hashlib

import msgspec
import numpy as np

__all__ = ["DEFAULT_POOL", "DEFAULT_TOPICS", "SimModel", "Topic", "answer", "make_prompt", "topic_examples"]


class SimModel(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    price_in_per_mtok: float
    price_out_per_mtok: float
    tier: float  # prior quality a platform team would write in config
    quality: dict[str, float]  # per topic, the probability a user is happy
    default_quality: float = 0.5
    latency_s: float = 0.0
    completion_tokens: int = 200
    error_rate: float = 0.0

    def quality_on(self, topic: str) -> float:
        return self.quality.get(topic, self.default_quality)


class Topic(msgspec.Struct, frozen=True):
    name: str
    templates: tuple[str, ...]
    fillers: tuple[str, ...]


DEFAULT_POOL: tuple[SimModel, ...] = (
    SimModel(name="sim-frontier", price_in_per_mtok=5.0, price_out_per_mtok=15.0, tier=0.85,
             quality={"code": 0.92, "cooking": 0.9, "travel": 0.9, "math": 0.93},
             latency_s=0.03, completion_tokens=400),
    SimModel(name="sim-coder", price_in_per_mtok=0.6, price_out_per_mtok=2.4, tier=0.7,
             quality={"code": 0.9, "cooking": 0.3, "travel": 0.35, "math": 0.75},
             latency_s=0.015, completion_tokens=300),
    SimModel(name="sim-chat", price_in_per_mtok=0.15, price_out_per_mtok=0.6, tier=0.6,
             quality={"code": 0.3, "cooking": 0.88, "travel": 0.86, "math": 0.35},
             latency_s=0.01, completion_tokens=250),
    SimModel(name="sim-mini", price_in_per_mtok=0.05, price_out_per_mtok=0.2, tier=0.45,
             quality={"code": 0.2, "cooking": 0.55, "travel": 0.6, "math": 0.2},
             latency_s=0.005, completion_tokens=150),
)  # fmt: skip

# Each template reads plainly as its topic: the router learns per cluster of embeddings, so a
# template that reads as another topic is routed as that one (a code template "Explain the time
# complexity of an algorithm that ..." sat with math's "Explain why ..." in most clusterings).
DEFAULT_TOPICS: tuple[Topic, ...] = (
    Topic("code", (
        "Write a Python function that {}.",
        "How do I {} in Python without a library?",
        "Fix the bug in my code: it should {} but raises an IndexError.",
        "Write unit tests for a function that {}.",
        "Refactor this JavaScript so that it can {}.",
    ), (
        "reverses a linked list", "parses a CSV file", "sorts a list of dictionaries by key",
        "merges two sorted arrays", "finds duplicate elements", "validates an email address",
        "reads a JSON config file", "computes a binary search", "flattens a nested list",
        "implements an LRU cache", "counts words in a string", "connects to a SQL database",
    )),
    Topic("cooking", (
        "Give me a recipe for {}.",
        "How long should I bake {} and at what temperature?",
        "What can I substitute for butter when making {}?",
        "Suggest a side dish that goes well with {}.",
        "How do I make {} taste less bland?",
    ), (
        "banana bread", "a vegetable lasagna", "roast chicken with garlic", "chocolate chip cookies",
        "a lentil soup", "homemade pizza dough", "a mushroom risotto", "apple pie",
        "grilled salmon", "a chickpea curry", "sourdough bread", "pancakes for breakfast",
    )),
    Topic("travel", (
        "Plan a three day itinerary for {}.",
        "What is the best season to visit {}?",
        "Which neighbourhoods should I stay in when visiting {}?",
        "What local food should I try in {}?",
        "How do I get around cheaply in {}?",
    ), (
        "Lisbon", "Kyoto", "Mexico City", "Iceland", "the Amalfi coast", "Vancouver",
        "Marrakech", "Buenos Aires", "Istanbul", "the Scottish Highlands", "Hanoi", "Prague",
    )),
    Topic("math", (
        "Solve the equation {} and show each step.",
        "Prove that {}.",
        "What is the derivative of {}?",
        "Compute the integral of {} from 0 to 1.",
        "Explain why {} using a simple example.",
    ), (
        "x squared plus 3x minus 10 equals zero", "the square root of 2 is irrational",
        "sin(x) times e to the x", "there are infinitely many primes", "x cubed minus 2x",
        "the sum of the first n odd numbers is n squared", "ln(x) over x",
        "two to the power ten", "the harmonic series diverges", "a matrix determinant",
    )),
)  # fmt: skip


def make_prompt(topic: Topic, rng: np.random.Generator) -> str:
    """A random prompt of ``topic``."""
    template = topic.templates[rng.integers(len(topic.templates))]
    return template.format(topic.fillers[rng.integers(len(topic.fillers))])


def topic_examples(topics: tuple[Topic, ...] = DEFAULT_TOPICS, per_topic: int = 12, seed: int = 7) -> list[str]:
    """Example prompts from each topic: cluster seeds for a newcomer's first run."""
    rng = np.random.default_rng(seed)
    return [make_prompt(t, rng) for t in topics for _ in range(per_topic)]


def answer(model: SimModel, prompt: str) -> tuple[str, int]:
    """The simulated answer text and its completion tokens (deterministic per prompt)."""
    h = int.from_bytes(hashlib.blake2b(f"{model.name}|{prompt}".encode(), digest_size=4).digest(), "little")
    tokens = max(1, int(model.completion_tokens * (0.75 + 0.5 * (h % 1000) / 1000.0)))
    text = f"[{model.name}] A simulated answer to: {prompt[:80]}"
    return text, tokens
