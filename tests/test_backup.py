"""service/backup.py without a server: which base backup a restore starts from, the restore command for a
pg_receivewal archive, pruning's arithmetic, and the embedded server's archiving configuration (the whole cycle on a
real server is tests/reliability/test_restore.py, `make test-restore`)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from service import backup

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _backup(backup_dir: Path, finished: datetime) -> backup.BackupInfo:
    label = finished.strftime("%Y%m%dT%H%M%S%fZ")
    info = backup.BackupInfo(label=label, started_at=finished - timedelta(seconds=3), finished_at=finished,
                             start_wal="000000010000000000000002", start_lsn="0/2000028", end_lsn="0/2000100",
                             timeline=1, server_version=180006, system_identifier="1", bytes=1, seconds=3.0,
                             verify_seconds=0.1)
    (backup_dir / "base").mkdir(parents=True, exist_ok=True)
    (backup_dir / "base" / f"{label}.json").write_bytes(msgspec.json.encode(info))
    return info


def test_a_restore_starts_from_the_newest_backup_that_ended_before_the_target(tmp_path: Path) -> None:
    first, second = _backup(tmp_path, T0), _backup(tmp_path, T0 + timedelta(hours=24))
    assert backup.choose(tmp_path, T0 + timedelta(hours=23)) == first
    assert backup.choose(tmp_path, T0 + timedelta(hours=25)) == second
    assert [b.label for b in backup.backups(tmp_path)] == [first.label, second.label]
    with pytest.raises(backup.BackupError, match="no base backup .* ended before"):
        backup.choose(tmp_path, T0)  # recovery cannot stop before a backup's end: not even at its very end


def test_a_restore_refuses_a_time_without_offset_and_a_used_directory(tmp_path: Path) -> None:
    _backup(tmp_path / "backups", T0)
    with pytest.raises(backup.BackupError, match="UTC offset"):
        backup.restore(tmp_path / "backups", datetime(2026, 12, 2), tmp_path / "into")  # noqa: DTZ001
    (tmp_path / "into" / "pg").mkdir(parents=True)
    (tmp_path / "into" / "pg" / "PG_VERSION").write_text("18")
    with pytest.raises(backup.BackupError, match="not empty"):
        backup.restore(tmp_path / "backups", T0 + timedelta(hours=1), tmp_path / "into")


def test_the_newest_partial_segment_of_pg_receivewal_is_restored_under_its_full_name(tmp_path: Path) -> None:
    archive = backup.archive_dir(tmp_path / "backups")
    archive.mkdir(parents=True)
    (archive / "000000010000000000000003").write_bytes(b"full")
    (archive / "000000010000000000000004.partial").write_bytes(b"partial")
    into = tmp_path / "into"
    into.mkdir()
    command = backup._restore_command(tmp_path / "backups", into)
    assert command.startswith(f'cp {archive.resolve()}/%f "%p"') and "restore-wal" in command
    assert (into / "restore-wal" / "000000010000000000000004").read_bytes() == b"partial"
    (archive / "000000010000000000000004").write_bytes(b"full now")  # completed: the archive's copy wins
    assert "restore-wal" not in backup._restore_command(tmp_path / "backups", tmp_path / "elsewhere")


def test_the_embedded_servers_archiving_configuration(tmp_path: Path) -> None:
    (tmp_path / "postgresql.conf").write_text("# initdb's\n")
    assert backup.write_archive_conf(tmp_path, tmp_path / "wal")
    conf = (tmp_path / backup.CONF_FILE).read_text()
    assert "archive_mode = on" in conf and f"basic_archive.archive_directory = '{(tmp_path / 'wal').resolve()}'" in conf
    assert (tmp_path / "postgresql.conf").read_text().count("include_if_exists") == 1
    assert not backup.write_archive_conf(tmp_path, tmp_path / "wal")  # unchanged: nothing to reload
    assert backup.write_archive_conf(tmp_path, None)  # a restored directory: off until invledger starts it
    assert "archive_mode = off" in (tmp_path / backup.CONF_FILE).read_text()
    assert (tmp_path / "postgresql.conf").read_text().count("include_if_exists") == 1


def test_a_description_that_names_another_directory_is_refused_not_followed(tmp_path: Path) -> None:
    """`LABEL.json` names the directory a restore copies and prune deletes: a label that is not its file's own (a
    path out of the backup directory, here) is refused by every reader, and prune deletes nothing."""
    kept = [_backup(tmp_path, T0 + timedelta(hours=h)) for h in range(3)]
    for info in kept:
        (tmp_path / "base" / info.label).mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("not a backup")
    forged = msgspec.structs.replace(kept[0], label="../victim")
    (tmp_path / "base" / f"{kept[0].label}.json").write_bytes(msgspec.json.encode(forged))
    with pytest.raises(backup.BackupError, match="describes backup '../victim'"):
        backup.prune(tmp_path, 1)
    with pytest.raises(backup.BackupError, match="describes backup"):
        backup.choose(tmp_path, T0 + timedelta(days=1))
    assert (victim / "data").read_text() == "not a backup"
    assert all((tmp_path / "base" / info.label).is_dir() for info in kept)
    (tmp_path / "base" / f"{kept[0].label}.json").write_bytes(msgspec.json.encode(kept[0]))
    (tmp_path / "base" / f"{kept[1].label}.json").write_text("{")
    with pytest.raises(backup.BackupError, match="is not a backup's description"):
        backup.backups(tmp_path)


def test_prune_removes_the_old_backups_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = [_backup(tmp_path, T0 + timedelta(hours=h)) for h in range(3)]
    for info in kept[1:]:
        (tmp_path / "base" / info.label).mkdir()  # the first's directory is already gone: not an error
    (tmp_path / "base" / kept[1].label / "PG_VERSION").write_text("18")
    backup.archive_dir(tmp_path).mkdir()
    monkeypatch.setattr(backup, "_run", lambda args, **_: "")  # pg_archivecleanup: not what this checks
    assert backup.prune(tmp_path, 1) == ([kept[0].label, kept[1].label], 0)
    assert [b.label for b in backup.backups(tmp_path)] == [kept[2].label]
    assert sorted(p.name for p in (tmp_path / "base").iterdir()) == [kept[2].label, f"{kept[2].label}.json"]


def test_a_failed_backup_leaves_no_copy_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pg_verifybackup refusing the copy fails the backup with its reason, and the copy (as large as the database)
    is removed: nothing for a restore to choose, nothing piling up night after night."""
    monkeypatch.setattr(backup, "_server_facts", lambda uri: {
        "now": T0, "version": 180006, "archive_mode": "on", "system_identifier": "1", "receiver_slot": False})

    def run(args: list[str], *, what: str, **_: object) -> str:
        if what == "pg_basebackup":
            copy = Path(args[args.index("-D") + 1])
            copy.mkdir(parents=True)
            (copy / "PG_VERSION").write_text("18")
            return ""
        raise backup.BackupError(f"{what} failed: checksum mismatch for file base/1/1259")

    monkeypatch.setattr(backup, "_run", run)
    with pytest.raises(backup.BackupError, match="pg_verifybackup failed: checksum mismatch"):
        backup.take("postgresql://postgres@localhost/postgres", tmp_path)
    assert list((tmp_path / "base").iterdir()) == []
    assert backup.backups(tmp_path) == []
