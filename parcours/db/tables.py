"""Import every model module so that `Base.metadata` holds the whole schema.

Alembic's env.py and the schema-drift test import this module. Each area keeps its tables in
its own module under `parcours/db/` and adds one import line here.
"""

from parcours.db import forecast_models  # noqa: F401
from parcours.db import ingest_models  # noqa: F401
from parcours.db import pathway_models  # noqa: F401
from parcours.db.models import Base, EncounterRow

__all__ = ["Base", "EncounterRow"]
