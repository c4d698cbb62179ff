"""FHIR R4 ingest gateway: validation, OperationOutcome errors, idempotent publishing to Kafka."""
