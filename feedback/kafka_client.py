"""kafka-python clients (producer, consumer, admin) built so that a failure leaves nothing open.

kafka-python 3.0 leaks sockets on some paths; the workarounds live here, in one place, so that
the adapters (``feedback.kafka``, ``feedback.sink``) only say which client they want.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["build_client", "close_refused_sockets"]

log = logging.getLogger("turnout.kafka")


def close_refused_sockets() -> None:
    """Work around kafka-python 3.0: a refused connection's socket is left to the garbage collector.

    While a broker is down every reconnect attempt drops an open socket object (a
    ResourceWarning each, an error under ``-W error``). Wrap ``KafkaNetSocket.sock_connect`` so
    that a failed connect closes its socket. Idempotent; a no-op on versions without that method.
    """
    try:
        from kafka.net.inet import KafkaNetSocket
    except ImportError:
        return
    original = getattr(KafkaNetSocket, "sock_connect", None)
    if original is None or getattr(original, "_closes_on_failure", False):
        return

    async def sock_connect(self: Any, net: Any, sock: Any, sockaddr: Any, timeout_at: Any = None) -> Any:
        try:
            return await original(self, net, sock, sockaddr, timeout_at=timeout_at)
        except BaseException:
            sock.close()
            raise

    sock_connect._closes_on_failure = True  # type: ignore[attr-defined]
    KafkaNetSocket.sock_connect = sock_connect  # type: ignore[method-assign]


def build_client(factory: Any, **config: Any) -> Any:
    """``factory(**config)`` (KafkaProducer, KafkaConsumer, KafkaAdminClient), cleaning up a failure.

    kafka-python 3.0 makes its network client (with a wakeup socket pair) before it bootstraps,
    and leaves it open when the bootstrap fails (broker down); close it here. Also applies
    ``close_refused_sockets``.
    """
    from kafka.net.compat import KafkaNetClient

    close_refused_sockets()
    made: list[Any] = []

    def network_client(**kwargs: Any) -> Any:
        made.append(KafkaNetClient(**kwargs))
        return made[-1]

    try:
        return factory(kafka_client=network_client, **config)
    except BaseException:
        for client in made:
            try:
                client.close()
            except Exception:  # already half torn down
                log.debug("closing a failed client", exc_info=True)
        raise
