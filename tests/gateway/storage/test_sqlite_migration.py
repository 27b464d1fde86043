"""A state.db written by the pid-ownership release opens, gains the lease column, and resumes its jobs."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.storage.sqlite_state import SqliteState
from gateway.storage.state import JobState

#: The tables of the release before leases, as its `_SCHEMA` created them (owner INTEGER: a pid).
OLD_SCHEMA = """
CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, modality TEXT NOT NULL,
    first_at REAL NOT NULL, last_at REAL NOT NULL);
CREATE TABLE instances (sop_uid TEXT PRIMARY KEY, series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, path TEXT NOT NULL, size INTEGER NOT NULL,
    calling_aet TEXT NOT NULL, received_at REAL NOT NULL, job_id INTEGER REFERENCES jobs(id), purged_at REAL);
CREATE TABLE job_members (job_id INTEGER NOT NULL REFERENCES jobs(id),
    sop_uid TEXT NOT NULL REFERENCES instances(sop_uid), PRIMARY KEY (job_id, sop_uid));
CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
    modality TEXT NOT NULL, state TEXT NOT NULL, failed_stage TEXT, enhancer TEXT, enhancer_version TEXT,
    device TEXT, only_destination TEXT, reprocess INTEGER NOT NULL DEFAULT 0, derived_series_uid TEXT,
    instance_count INTEGER NOT NULL, derived_count INTEGER, attempts INTEGER NOT NULL DEFAULT 0, next_try_at REAL,
    error TEXT, skip_reason TEXT, psnr REAL, ssim REAL, enhance_seconds REAL, owner INTEGER,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, finished_at REAL, strength REAL, noise_sigma REAL,
    noise_method TEXT, qa_verdict TEXT, qa_action TEXT, qa_reasons TEXT, dr_psnr REAL, dr_ssim REAL,
    reviewed_at REAL, study_group TEXT);
CREATE TABLE deliveries (job_id INTEGER NOT NULL REFERENCES jobs(id), destination TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try_at REAL NOT NULL, last_error TEXT,
    delivered_at REAL, PRIMARY KEY (job_id, destination));
CREATE TABLE destination_health (destination TEXT PRIMARY KEY, last_success_at REAL, last_failure_at REAL,
    consecutive_failures INTEGER NOT NULL DEFAULT 0);
"""


def test_a_pid_owned_database_gains_leases_and_its_jobs_in_flight_resume(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO series VALUES ('1.2.3', '1.2', 'CT', 1, 1)")
    db.execute("INSERT INTO instances VALUES ('1.2.3.1', '1.2.3', '1.2', '1.2.840', '/x', 1, 'CT01', 1, 1, NULL)")
    for job_id, state in ((1, "enhancing"), (2, "sending"), (3, "done")):
        db.execute("INSERT INTO jobs(id, study_uid, series_uid, modality, state, instance_count, owner, created_at,"
                   " updated_at) VALUES (?, '1.2', '1.2.3', 'CT', ?, 1, 4242, 1, 1)", (job_id, state))
    db.execute("INSERT INTO deliveries VALUES (2, 'pacs', 'sending', 0, 1, NULL, NULL)")
    db.commit()
    db.close()

    state = SqliteState(path)
    assert "lease_expires_at" in {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(jobs)")}
    old = state.job(1)
    assert (old.state, old.owner, old.lease_expires_at) == (JobState.ENHANCING, "4242", None)
    assert state.lease_holders() == ["4242"]
    assert state.recover() == {"enhancing": 1, "sending": 1}  # a pid-era claim has no lease: it resumes
    assert [state.job(i).state for i in (1, 2, 3)] == [JobState.QUEUED, JobState.ENHANCED, JobState.DONE]
    assert state.deliveries(2)[0].state == "pending"
    state.close()
    SqliteState(path).close()  # opening a migrated database again changes nothing


def test_a_database_that_stored_paths_drops_the_column_and_keeps_its_instances(tmp_path: Path) -> None:
    """Rows store keys, not paths: the old `path TEXT NOT NULL` would refuse every row written without it."""
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute("INSERT INTO series VALUES ('1.2.3', '1.2', 'CT', 1, 1)")
    db.execute("INSERT INTO instances VALUES ('1.2.3.1', '1.2.3', '1.2', '1.2.840', '/old/1.dcm', 7, 'CT01', 1,"
               " NULL, 5)")
    db.commit()
    db.close()

    state = SqliteState(path)
    assert "path" not in {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(instances)")}
    assert state.instance_purged("1.2.3.1") is True
    state.mark_restored("1.2.3.1")
    assert state.record_instance(sop_uid="1.2.3.2", series_uid="1.2.3", study_uid="1.2", sop_class_uid="1.2.840",
                                 modality="CT", size=9, calling_aet="CT01", now=2.0)
    assert [(i.sop_uid, i.size, i.purged_at) for i in state.series_instances("1.2")] == [
        ("1.2.3.1", 7, None), ("1.2.3.2", 9, None)]
    (job_id,) = state.make_jobs_for_stable_series(1.0, now=10.0)
    assert [i.key.sop_uid for i in state.job_instances(job_id)] == ["1.2.3.1", "1.2.3.2"]
    state.close()
    SqliteState(path).close()  # opening a migrated database again changes nothing
