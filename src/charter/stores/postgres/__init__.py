"""A context's store in its own PostgreSQL schema (psycopg 3 with a connection pool).

Same semantics as the SQLite store. PostgreSQL does more of the work itself:
`unique` is a unique index, `no_overlap` an `EXCLUDE USING gist` constraint, and
the single writer rests on roles and grants (`charter apply`); a guard trigger
also refuses, with the owner's name, any write that does not come through
charter. The relay reads a pending table rather than a position, because a
sequence number becomes visible at commit, not at insert: a position would skip
a row that commits late."""

from charter.stores.postgres.core import split_url
from charter.stores.postgres.store import PostgresStore

__all__ = ["PostgresStore", "split_url"]
