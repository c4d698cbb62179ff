"""Import every model module so that `Base.metadata` holds the whole schema.

Alembic's env.py and the schema-drift test import this module. Each area keeps its tables in a
module `parcours/db/<area>_models.py`; every such module is imported here, so adding an area
needs no edit of this file.
"""

import importlib
import pkgutil

import parcours.db
from parcours.db.models import Base, EncounterRow

for _module in pkgutil.iter_modules(parcours.db.__path__):
    if _module.name.endswith("_models"):
        importlib.import_module(f"parcours.db.{_module.name}")

__all__ = ["Base", "EncounterRow"]
