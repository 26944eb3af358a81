"""Which Kafka partition an entity's events are on: the producers' partitioner, for readers.

On a Redis Cluster the online store keeps an entity's state in the slot of the Kafka partition
its events arrive on (docs/online-store.md, "Redis Cluster"), so a reader must compute that
partition from the entity alone. Kafka's default partitioner (the Java client's, kafka-python's
``DefaultPartitioner``) hashes the message key with murmur2: ``(murmur2(key) & 0x7fffffff) %
partitions``. featurepipe keys every message by the entity's text (``str(entity)``, a composite
key's joined text), so the partition follows from the entity and the topic's partition count.

Pure code: the online layer does not import a Kafka client for it (the test suite checks this
function against kafka-python's and the Java client's published values).
"""

from __future__ import annotations

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of ``data`` as an unsigned 32-bit int (``Utils.murmur2`` & 0xffffffff)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length - length % 4
    for i in range(0, whole, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length % 4
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_of(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives a message keyed ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def entity_partition(entity: str | int, partitions: int) -> int:
    """The partition of the messages of ``entity`` (keyed by its text, as featurepipe produces
    them and the stream worker checks)."""
    return partition_of(str(entity).encode(), partitions)
