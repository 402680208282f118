"""service.replica.lag_ms on a real standby (tests/replication.py): 0 while it streams and has replayed all it
received; once its primary is gone (no WAL receiver), the age of the last commit it replayed — not 0, which said a
cut-off replica was current however far the primary had moved on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from service.replica import lag_ms
from tests.replication import Cluster
from tests.waiting import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CUT_OFF_S = 1.0


def test_a_replica_cut_off_from_its_primary_is_not_current(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster", synchronous=False)
    assert cluster.standby is not None
    primary = sa.create_engine(cluster.primary.url(), poolclass=sa.pool.NullPool)
    with primary.begin() as c:  # read as a role without pg_read_all_stats, as the application's may be
        c.execute(sa.text("CREATE ROLE lag_reader LOGIN"))
    primary.dispose()
    standby = sa.create_engine(cluster.standby.url(user="lag_reader"), poolclass=sa.pool.NullPool)
    try:
        cluster.wait_replayed()
        wait_until(lambda: lag_ms(standby) == 0, timeout_s=30, what="the streaming standby to say it is current")
        cluster.primary.stop()  # from here on the primary may take writes the standby never hears of
        wait_until(lambda: cluster.standby.scalar("SELECT count(*) FROM pg_stat_wal_receiver") == 0, timeout_s=30,
                   what="the standby's WAL receiver to end")
        time.sleep(CUT_OFF_S)
        assert lag_ms(standby) >= CUT_OFF_S * 1000
    finally:
        standby.dispose()
        cluster.stop()
