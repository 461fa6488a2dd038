"""A request decides on one snapshot: a swap in the middle of routing cannot mix two (issue 10, item 5).

Before: ``ChatService.route`` captured the view but ``Router.decide`` read ``Router.view`` again,
so a swap in between logged the wrong version and, after a re-clustering, could index a cluster
that the other snapshot did not have. Here the router swaps in a snapshot of a different
clustering (one cluster instead of several, another version) the moment the view is first read.
"""

from __future__ import annotations

import msgspec
import numpy as np

from learner.embedding import normalize_rows
from service.routing import Router


class _SwapOnRead(Router):
    """Serves the live view once, then swaps ``later`` in before anyone reads it again."""

    def __init__(self, inner: Router, later) -> None:
        super().__init__(inner.pricing, inner.params)
        self._view = inner.view
        self._later = later
        self.reads = 0

    @property
    def view(self):
        view = self._view
        self.reads += 1
        if self.reads == 1:
            self.swap(self._later)
        return view


def test_a_swap_during_routing_does_not_mix_two_snapshots(runtime):
    chat = runtime.chat
    live = chat.routing.router.view.snapshot  # the router of the routing step (service/route_request.py)
    # the next snapshot: a single catch-all cluster, so cluster ids >= 1 do not exist in it
    k1 = msgspec.structs.replace(
        live, version=live.version + 1, parent=live.version, reason="manual", clustering=live.clustering + 1,
        centroids=normalize_rows(np.ones((1, live.dim), dtype=np.float32)).astype("<f4").tobytes(),
        n=(live.n[0],), reward_sum=(live.reward_sum[0],), decisions=(live.decisions[0],), drift=(),
    )  # fmt: skip
    assert len(live.n) > 1  # the demo topics' clusters
    chat.routing.router = _SwapOnRead(chat.routing.router, k1)
    prompts = ["Write a Python function that parses a CSV file", "Plan three days in Lisbon",
               "Give me a recipe for banana bread", "Prove that the square root of 2 is irrational"]  # fmt: skip
    body = {"model": "auto", "messages": [{"role": "user", "content": prompts[0]}]}
    routed = chat.route(chat.parse(msgspec.json.encode(body)))
    assert chat.routing.router.reads >= 1 and chat.routing.router._view.snapshot.version == live.version + 1  # swapped mid-request
    assert (routed.snapshot_version, routed.clustering) == (live.version, live.clustering)
    assert 0 <= routed.choice.cluster < len(live.n)
    expected = chat.routing.router._view  # the new view routes the next request
    again = chat.route(chat.parse(msgspec.json.encode({**body, "messages": [{"role": "user", "content": prompts[1]}]})))
    assert again.snapshot_version == expected.snapshot.version and again.choice.cluster == 0


def test_deciding_a_routed_request_again_on_the_same_view_gives_the_same_decision(runtime):
    """``decide_again`` (a shadow's candidate) is the routing step's own decision, not a second
    router: on the live view it reproduces every live choice, arm and propensities alike."""
    from service.tenants import ANONYMOUS

    chat = runtime.chat
    view = chat.routing.router.view
    prompts = ["Write a Python function that parses a CSV file", "Plan three days in Lisbon",
               "Give me a recipe for banana bread", "Prove that the square root of 2 is irrational",
               "Translate 'good morning' into French", "Why is the sky blue?"]  # fmt: skip
    rng = np.random.default_rng(0)
    for i in range(24):
        body = {"model": "auto", "messages": [{"role": "user", "content": prompts[i % len(prompts)]}]}
        routed = chat.route(chat.parse(msgspec.json.encode(body)))
        assert routed.row >= 0
        again = chat.routing.decide_again(view, routed, ANONYMOUS.tenant, False, rng)
        assert again == routed.choice
    # asked by name: not the policy's choice, nothing to decide again
    name = view.models[0]
    by_name = chat.route(chat.parse(msgspec.json.encode({**body, "model": name})))
    assert by_name.policy == "passthrough" and chat.routing.decide_again(view, by_name, ANONYMOUS.tenant, False, rng) is None
