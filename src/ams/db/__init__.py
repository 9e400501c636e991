"""The database: SQLAlchemy models, engines for SQLite and PostgreSQL, Alembic migrations.

Modules: ``engine`` (engines and URLs), ``models`` (the tables), ``revision`` (the schema
revision needed and the one a database holds, without Alembic), ``migrate`` (Alembic,
loaded only to migrate). Import from them directly: this package imports nothing, so that
loading the models does not load the rest.
"""
