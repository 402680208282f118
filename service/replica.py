"""How far behind the primary a streaming replica is, read on the replica itself (REPORTS_DATABASE_URL)."""

from __future__ import annotations

import sqlalchemy as sa

# On a primary: 0. On a standby that streams (a WAL receiver runs) and has replayed all the WAL it received: 0.
# Otherwise: the age of the last transaction it replayed — an upper bound, since it has at least that.
# (After the primary was idle, this is the idle time until the next replay; it only ever overstates.) A standby cut off
# from its primary keeps its last received position, so "replayed all it received" alone said 0 however far the
# primary had moved on; pg_stat_wal_receiver shows its row (the pid) to every role, so no privilege is needed.
_LAG_MS = sa.text("""
    SELECT CASE
             WHEN NOT pg_is_in_recovery() THEN 0
             WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
                  AND EXISTS (SELECT FROM pg_stat_wal_receiver) THEN 0
             ELSE GREATEST(0, floor(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000))
           END::bigint""")


def lag_ms(engine: sa.Engine) -> int:
    """The replica's lag now, in whole milliseconds (0 when it is caught up or is a primary). Taken before a report's
    own snapshot, it bounds that report's lag from above: the snapshot sees at least what was replayed here."""
    with engine.connect() as connection:
        return int(connection.execute(_LAG_MS).scalar_one() or 0)
