"""One rule places a patient: the gateway's partition for a key is the worker's for that patient."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from parcours.topics import partition_of_key
from streams.runtime.batch import partition_for


def test_a_patient_key_lands_where_kafka_clients_put_it() -> None:
    keys = [f"Patient/{i}".encode() for i in range(200)] + [b"", "Patient/é".encode()]
    for partitions in (1, 4, 7):
        ids = list(range(partitions))
        placed = {partition_of_key(key, partitions) for key in keys}
        assert placed == set(ids)
        for key in keys:
            assert partition_of_key(key, partitions) == DefaultPartitioner()(key, ids, ids)
            assert partition_for(key.decode(), partitions) == partition_of_key(key, partitions)
