"""Events and the path that carries them into ClickHouse (in-process bus, Kafka, sink)."""
