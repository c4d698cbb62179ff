"""Territory simulator: realistic, seeded FHIR R4 traffic for a city-hospital territory.

- `territory`: the places, people and rates (a YAML or TOML file, or the Dijon-like default);
- `model`: the pure, seeded discrete-event simulation (simulated time only);
- `fhir`: simulated facts → FHIR R4 JSON, per docs/FHIR_PROFILE.md;
- `imperfect`: duplicates, out-of-order and late delivery, missing discharge times, invalid
  resources;
- `truth`: the ground truth (hourly ward occupancy, pathway facts per patient);
- `sinks`: NDJSON files, Kafka, the HTTP gateway;
- `cli`: `parcours simulate`.
"""


class SimulationError(Exception):
    """Base exception of the simulator (bad territory file, sink failure)."""
