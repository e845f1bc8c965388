"""The PostgreSQL store, a package (being split by concern; see schema.py for now)."""

from charter.stores.postgres.schema import PostgresStore, split_url

__all__ = ["PostgresStore", "split_url"]
