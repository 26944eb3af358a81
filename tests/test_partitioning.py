"""The partition of an entity, as readers of a Redis Cluster store compute it, is Kafka's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from kafka.partitioner.default import DefaultPartitioner
from kafka.partitioner.default import murmur2 as kafka_python_murmur2

from featurepipe.online.partitioning import entity_partition, murmur2, partition_of


class _Metadata:
    """The three questions kafka-python's partitioner asks the cluster metadata."""

    def __init__(self, n: int) -> None:
        self.n = n

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))


# org.apache.kafka.common.utils.UtilsTest#testMurmur2 (the Java client's values, signed)
JAVA = {
    "21": -973932308,
    "foobar": -790332482,
    "a-little-bit-long-string": -985981536,
    "a-little-bit-longer-string": -1486304829,
    "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    "abc": 479470107,
}


def test_murmur2_gives_the_java_client_s_values() -> None:
    for text, signed in JAVA.items():
        assert murmur2(text.encode()) == signed & 0xFFFFFFFF, text


@given(st.binary(max_size=64))
def test_murmur2_equals_kafka_python_s(data: bytes) -> None:
    assert murmur2(data) == kafka_python_murmur2(data) & 0xFFFFFFFF


@given(
    st.one_of(st.text(max_size=30), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.integers(min_value=1, max_value=500),
)
def test_the_partition_is_the_one_kafka_python_s_producer_picks(entity: str | int, n: int) -> None:
    key = str(entity).encode()
    picked = DefaultPartitioner().partition("t", entity, key, None, None, _Metadata(n))
    assert entity_partition(entity, n) == partition_of(key, n) == picked
