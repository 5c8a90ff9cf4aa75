"""Optuna searches that several worker processes share: one study in one storage.

The Optuna sweeper (hydra-optuna-sweeper 1.2) pins optuna < 3, and Optuna 2.10's RDBStorage
was written for SQLAlchemy 1: under SQLAlchemy 2 (which MLflow 3 needs) it stamps its
schema version on a connection it never commits, so every storage it creates is refused on
first use ("assert version is not None"). `study_storage` creates the tables and the stamp
itself, committed, under a lock (a sqlite file is created by one worker while the others
wait), then opens Optuna's own storage on them.

    python -m pipeline.train -m hparams_search=augmentation \
        hydra.sweeper.storage.url=sqlite:///optuna.db hydra.sweeper.study_name=my-search
"""

from __future__ import annotations

import os

import sqlalchemy
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from optuna.storages import RDBStorage
from optuna.storages._rdb import models

from pipeline.tracking.store import store_lock


def study_storage(url: str | None) -> RDBStorage | None:
    """Optuna's storage at `url` (e.g. sqlite:///optuna.db, postgresql://...), created if new;
    None keeps the study in memory (not shared, not resumable)."""
    if not url:
        return None
    with store_lock(url):
        engine = sqlalchemy.create_engine(url)
        models.BaseModel.metadata.create_all(engine)
        with engine.begin() as connection:  # committed on leaving the block
            context = MigrationContext.configure(connection)
            if context.get_current_revision() is None:
                migrations = os.path.join(os.path.dirname(models.__file__), "alembic")
                context.stamp(ScriptDirectory(migrations), "head")
        engine.dispose()
        return RDBStorage(url)
