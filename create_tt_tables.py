"""``python create_tt_tables.py``: create or upgrade the ``tt_*`` tables in the configured database (idempotent).

The schema itself (tables, version, upgrade steps) lives in ``tt_schema.py``; every other command applies it
through ``db_utils.connect`` as well, so running this by hand is optional. docs/database.md explains the policy.
"""

from __future__ import annotations

import db_utils
from settings import CommonSettings, parse_command, run_cli
from tt_schema import SCHEMA_VERSION


def main(argv: list[str] | None = None) -> int:
    """Create or upgrade the tables in the configured database and say what changed."""
    settings = parse_command(CommonSettings, argv, "Create or upgrade the tt_* tables (idempotent).")
    if settings is None:
        return 0
    engine = db_utils.connect(settings, create_schema=False)
    changes = db_utils.apply_schema(engine)
    print("\n".join(changes) if changes else f"schema is up to date (version {SCHEMA_VERSION}); nothing changed")
    return 0


def cli() -> int:
    """The ``create-tt-tables`` console script (pyproject.toml): ``main`` with user errors as one line."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())
