"""What a test reads back from a results database, through a throwaway engine (so a test never holds a
connection the code under test might wait on): `rows(db, query, **params)` as plain dicts, `tables(db)`."""

from __future__ import annotations

import sqlalchemy as sa


def rows(db: str, query: str, **params) -> list[dict]:
    engine = sa.create_engine(db)
    try:
        with engine.connect() as c:
            return [dict(r) for r in c.execute(sa.text(query), params).mappings()]
    finally:
        engine.dispose()


def tables(db: str) -> set[str]:
    """The names of the tables in a database."""
    engine = sa.create_engine(db)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
