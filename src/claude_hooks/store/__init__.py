"""Storage: the `Store` protocol (`base`), its SQL implementation for SQLite and PostgreSQL
(`sql` and the modules it composes), and the migrations.

Above the pure rules of `core`; nothing here knows the forge, the agents or the service.
"""
