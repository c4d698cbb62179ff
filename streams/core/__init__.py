"""The pure rules of the stream processors: FHIR → canonical events → pathway state, census.

Nothing here does I/O: no Faust, Kafka, SQL or Streamlit import.
"""
