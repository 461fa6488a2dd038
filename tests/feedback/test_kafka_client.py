"""kafka-python clients built by ``feedback.kafka_client`` leave no socket or thread behind when closed,
also in the cases where kafka-python 3.0 itself would (a request still queued, a batch still pending)."""

from __future__ import annotations

import gc
import threading

from feedback.kafka import ensure_topics
from feedback.kafka_client import build_client, close_producer


def _threads(name: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == name]


def test_a_client_closed_with_a_request_still_queued_closes_its_socket(kafka_broker):
    from kafka.protocol.metadata import MetadataRequest

    # The network client alone (the seam build_client gives every producer, consumer and admin client)
    client = build_client(lambda kafka_client, **config: kafka_client(**config),
                          bootstrap_servers=[kafka_broker.bootstrap], client_id="turnout-test-queued")  # fmt: skip
    try:
        node = client.cluster.bootstrap_brokers()[0].node_id
        assert client.await_ready(node, timeout_ms=10_000)
        client.send(node, MetadataRequest(topics=[]))  # queued; kafka-python writes it at the loop's next turn
        transport = client._manager._conns[node].transport
        sock = transport._sock  # the connection's socket, to look at after the close
        assert transport._write_buffer, "the request should still be queued for this test to mean anything"
    finally:
        client.close()
    assert sock.fileno() == -1  # kafka-python alone leaves it open, for a garbage collection to warn about


def test_a_producer_closed_with_a_batch_pending_stops_its_thread(broker_factory, unique_topics):
    from kafka import KafkaProducer

    broker = broker_factory()
    topic = unique_topics["decisions"]
    ensure_topics(broker.bootstrap, [topic])
    producer = build_client(KafkaProducer, bootstrap_servers=[broker.bootstrap], client_id="turnout-test-pending",
                            acks="all", delivery_timeout_ms=120_000, request_timeout_ms=60_000)  # fmt: skip
    producer.send(topic, b"delivered").get(timeout=30)
    broker.kill()
    pending = producer.send(topic, b"pending")  # nothing will fail it for two minutes
    assert _threads("turnout-test-pending-network-thread")

    close_producer(producer, timeout_s=10.0)  # KafkaProducer.close(timeout=0) raises here and closes nothing
    assert pending.is_done and not pending.succeeded()  # dropped, not left retrying
    assert not _threads("turnout-test-pending-network-thread")
    del producer, pending
    gc.collect()  # a socket left open would warn here (an error in this suite)
