"""kafka-python clients (producer, consumer, admin) built and closed so that nothing is left open.

kafka-python 3.0 leaks sockets and threads on some paths; the workarounds live here, in one place,
so that the adapters (``feedback.kafka``, ``feedback.sink``) only say which client they want.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

__all__ = ["build_client", "close_producer"]

log = logging.getLogger("turnout.kafka")

# The broker sockets each kafka-python event loop (a NetworkSelector, one per client) connected:
# closing the loop closes those still open (see ``_watch_sockets``).
_opened: weakref.WeakKeyDictionary[Any, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()
_opened_lock = threading.Lock()


def _watch_sockets() -> None:
    """Make kafka-python 3.0 close every broker socket it opens. Idempotent; a no-op on versions
    without ``KafkaNetSocket.sock_connect``.

    - A refused connection's socket is left to the garbage collector: while a broker is down every
      reconnect attempt drops an open socket object (a ResourceWarning each, an error under
      ``-W error``). The wrapped ``sock_connect`` closes it.
    - Closing a client closes its connections gracefully, and ``KafkaTCPTransport.close``
      (kafka/net/transport.py:40) leaves the socket to the connection's writer task while a request
      is still queued (a producer's retry, a metadata refresh, written at the loop's next turn);
      ``NetworkSelector.close`` (kafka/net/selector.py:698) then cancels that task, so the
      established socket is never closed and waits, in a reference cycle, for a garbage collection
      to warn about it in unrelated code. The leak is inside kafka-python; it is closed from outside:
      each socket is noted under the event loop that connects it, and when that loop is closed
      (the last step of every client's ``close``), the sockets it left open are closed too. Nothing
      else could close them: their loop is gone.
    """
    try:
        from kafka.net.inet import KafkaNetSocket
        from kafka.net.selector import NetworkSelector
    except ImportError:
        return
    original = getattr(KafkaNetSocket, "sock_connect", None)
    if original is None or getattr(original, "_watched", False):
        return

    async def sock_connect(self: Any, net: Any, sock: Any, sockaddr: Any, timeout_at: Any = None) -> Any:
        with _opened_lock:
            _opened.setdefault(net, weakref.WeakSet()).add(sock)
        try:
            return await original(self, net, sock, sockaddr, timeout_at=timeout_at)
        except BaseException:
            sock.close()
            raise

    close_loop = NetworkSelector.close

    def close(self: Any) -> None:
        try:
            close_loop(self)
        finally:
            with _opened_lock:
                left = [s for s in _opened.pop(self, ()) if s.fileno() != -1]
            for sock in left:
                log.debug("closing a socket kafka-python left open: %s", sock)
                sock.close()

    sock_connect._watched = True  # type: ignore[attr-defined]
    NetworkSelector.close = close  # type: ignore[method-assign]
    KafkaNetSocket.sock_connect = sock_connect  # type: ignore[method-assign]


def build_client(factory: Any, **config: Any) -> Any:
    """``factory(**config)`` (KafkaProducer, KafkaConsumer, KafkaAdminClient), cleaning up a failure.

    kafka-python 3.0 makes its network client (with a wakeup socket pair) before it bootstraps,
    and leaves it open when the bootstrap fails (broker down); close it here. Also applies
    ``_watch_sockets``.
    """
    from kafka.net.compat import KafkaNetClient

    _watch_sockets()
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


def close_producer(producer: Any, timeout_s: float) -> None:
    """Close a KafkaProducer for good, dropping what it still holds: its sender thread stopped and
    joined (within about ``timeout_s``), its network client closed by that thread on its way out.

    kafka-python 3.0's ``KafkaProducer.close(timeout)`` begins with ``flush(timeout)``
    (kafka/producer/kafka.py:695), which raises KafkaTimeoutError while a batch is still pending (a
    broker down, or restarted and not answering yet): then nothing is closed, and the sender thread
    goes on retrying with its connections open until ``__del__`` tries again (and may raise there).
    ``close(timeout=0)`` does not join the thread either (kafka/producer/kafka.py:697-714). Our
    callers have already counted what is pending as not delivered (and journaled it), so the sender
    is told to drop it and stop at once, then joined.
    """
    sender = getattr(producer, "_sender", None)  # no public way to stop the sender without a flush first
    if sender is not None:
        sender.force_close()
    try:
        producer.close(timeout=timeout_s)
    except Exception:  # closing a broken producer may complain; its thread has been told to stop
        log.debug("closing a Kafka producer", exc_info=True)
    if sender is not None and sender.is_alive():
        log.warning("Kafka producer thread %s did not stop within %.1f s", sender.name, timeout_s)
