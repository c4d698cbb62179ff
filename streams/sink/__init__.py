"""The SQL side of the stream processors: batched, idempotent, bounded writes."""
