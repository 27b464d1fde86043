"""What only the PostgreSQL store promises, on a real server (`postgres_server` in tests/conftest.py): claims by
several workers at once never overlap, migrations are versioned and safe to run twice or concurrently, a crashed
server loses no committed row and the store reconnects (StateError while it is down), and no password is ever
printed (NOTIFY wake-ups: test_wake.py). The behaviours both stores share are in test_state_contract.py; the
methods it does not cover are run here on both stores and must answer alike (`test_both_stores_answer_alike`).
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway.errors import StateError
from gateway.storage import pg_schema
from gateway.storage.postgres_state import PostgresState
from gateway.storage.sqlite_state import SqliteState
from gateway.storage.state import JobState, QaAction, QaOutcome, QaVerdict, StateStore
from tests.peers import free_port
from tests.servers import PostgresServer


@pytest.fixture
def open_pg(postgres_url: str) -> Iterator[Callable[..., PostgresState]]:
    """Open stores on the test's database (each with its own pool: another process, another node); all closed
    at the end."""
    opened: list[PostgresState] = []

    def open_store(**kwargs: Any) -> PostgresState:
        store = PostgresState(postgres_url, **kwargs)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def _receive(state: StateStore, series: str, n: int, now: float, study: str = "1.2") -> None:
    for i in range(n):
        state.record_instance(
            sop_uid=f"1.2.3.{series}.{i}", series_uid=f"1.2.{series}", study_uid=study, sop_class_uid="1.2.840",
            modality="CT", size=10, calling_aet="CT01", now=now,
        )


# --- several workers at once ----------------------------------------------------------------------------------


def test_four_concurrent_claimers_take_each_of_50_jobs_exactly_once(open_pg: Callable[..., PostgresState]) -> None:
    feeder = open_pg()
    for s in range(50):
        _receive(feeder, str(s), 1, now=1.0)
    assert len(feeder.make_jobs_for_stable_series(0, now=2.0)) == 50
    claimers = [open_pg(worker_id=f"node-{i}:1:abcdef") for i in range(4)]
    claimed: list[list[int]] = [[] for _ in claimers]
    start = threading.Barrier(len(claimers))

    def claim_all(i: int) -> None:
        start.wait()
        while (job := claimers[i].claim_job(JobState.QUEUED, JobState.ENHANCING)) is not None:
            claimed[i].append(job.id)
            assert job.owner == claimers[i].worker_id

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(claimers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = Counter(j for ids in claimed for j in ids)
    assert sorted(every) == sorted(j.id for j in feeder.jobs()) and set(every.values()) == {1}
    owners = {j.id: j.owner for j in feeder.jobs()}
    for i, ids in enumerate(claimed):  # the row says who claimed it: the claimer that got it, no one else
        assert all(owners[j] == claimers[i].worker_id for j in ids)


def test_concurrent_senders_of_one_destination_take_different_deliveries(
    open_pg: Callable[..., PostgresState],
) -> None:
    enhancer = open_pg()
    for s in range(20):
        _receive(enhancer, str(s), 1, now=1.0)
    enhancer.make_jobs_for_stable_series(0, now=2.0)
    while (job := enhancer.claim_job(JobState.QUEUED, JobState.ENHANCING)) is not None:
        enhancer.finish_enhancement(job.id, destinations=["pacs", "archive"], derived_count=1, psnr=None, ssim=None,
                                    seconds=0)
    senders = [open_pg() for _ in range(3)]
    got: list[list[tuple[int, str]]] = [[] for _ in senders]
    start = threading.Barrier(len(senders))

    def send_all(i: int) -> None:
        start.wait()
        while (claim := senders[i].claim_delivery("pacs")) is not None:
            got[i].append((claim[0].id, claim[1].destination))

    threads = [threading.Thread(target=send_all, args=(i,)) for i in range(len(senders))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = Counter(c for claims in got for c in claims)
    assert len(every) == 20 and set(every.values()) == {1} and {d for _, d in every} == {"pacs"}


def test_two_completion_stages_make_one_job_per_series(open_pg: Callable[..., PostgresState]) -> None:
    """Completion running on two receivers at once: the series row lock makes the second find nothing left."""
    a, b = open_pg(), open_pg()
    for s in range(30):
        _receive(a, str(s), 3, now=1.0)
    made: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def complete(i: int, store: PostgresState) -> None:
        start.wait()
        made[i] = store.make_jobs_for_stable_series(0, now=2.0)

    threads = [threading.Thread(target=complete, args=(i, s)) for i, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    jobs = a.jobs()
    assert len(made[0]) + len(made[1]) == 30 == len(jobs) == len({j.series_uid for j in jobs})
    assert all(j.instance_count == 3 for j in jobs)


def test_two_workers_numbering_derived_series_of_one_study_never_share_a_number(
    open_pg: Callable[..., PostgresState],
) -> None:
    stores = [open_pg() for _ in range(4)]
    numbers: dict[str, int] = {}
    start = threading.Barrier(len(stores))

    def number(i: int) -> None:
        start.wait()
        for k in range(5):
            uid = f"2.25.{i}.{k}"
            numbers[uid] = stores[i].derived_series_number("1.2", uid, list(range(1001, 1041)))

    threads = [threading.Thread(target=number, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(numbers) == 20 and len(set(numbers.values())) == 20
    assert stores[0].derived_series_number("1.2", "2.25.0.0", [1, 2]) == numbers["2.25.0.0"]  # kept once given


# --- migrations -------------------------------------------------------------------------------------------------


def test_migrations_apply_once_and_a_second_upgrade_does_nothing(postgres_url: str) -> None:
    assert pg_schema.status(postgres_url).version == 0
    assert pg_schema.upgrade(postgres_url) == list(range(1, pg_schema.LATEST + 1))
    assert pg_schema.upgrade(postgres_url) == []
    now = pg_schema.status(postgres_url)
    assert (now.version, now.pending) == (pg_schema.LATEST, 0)
    store = PostgresState(postgres_url, migrate=False)  # current: opens without migrating
    store.close()


def test_two_nodes_upgrading_at_once_apply_each_migration_once(postgres_url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def upgrade() -> None:
        start.wait()
        try:
            results.append(pg_schema.upgrade(postgres_url))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=upgrade) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results, key=len) == [[], [], [], list(range(1, pg_schema.LATEST + 1))]
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, pg_schema.LATEST + 1))


def test_a_database_without_schema_or_newer_than_the_code_is_refused(postgres_url: str) -> None:
    with pytest.raises(StateError, match="db upgrade"):
        PostgresState(postgres_url, migrate=False)
    pg_schema.upgrade(postgres_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_version VALUES (%s, 0)", (pg_schema.LATEST + 1,))
    for migrate in (True, False):
        with pytest.raises(StateError, match="newer than this gateway"):
            PostgresState(postgres_url, migrate=migrate)


def test_migration_2_drops_the_path_column_and_keeps_the_instances(postgres_url: str) -> None:
    """A database at migration 1 (rows stored paths) upgrades in place: its instances survive without paths."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(pg_schema._VERSION_TABLE)
        conn.execute(pg_schema.MIGRATIONS[0])
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        conn.execute("INSERT INTO series VALUES ('1.2.3', '1.2', 'CT', 1, 1)")
        conn.execute("INSERT INTO instances(sop_uid, series_uid, study_uid, sop_class_uid, path, size, calling_aet,"
                     " received_at) VALUES ('1.2.3.1', '1.2.3', '1.2', '1.2.840', '/old/1.dcm', 7, 'CT01', 1)")
    assert pg_schema.upgrade(postgres_url) == list(range(2, pg_schema.LATEST + 1))
    with psycopg.connect(postgres_url) as conn:
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'instances'")}
    assert "path" not in columns
    store = PostgresState(postgres_url, migrate=False)
    try:
        assert store.record_instance(sop_uid="1.2.3.2", series_uid="1.2.3", study_uid="1.2", sop_class_uid="1.2.840",
                                     modality="CT", size=9, calling_aet="CT01", now=2.0)
        assert [(i.sop_uid, i.size) for i in store.series_instances("1.2")] == [("1.2.3.1", 7), ("1.2.3.2", 9)]
    finally:
        store.close()


# --- a crashed server -------------------------------------------------------------------------------------------


def test_kill_9_of_the_server_loses_no_committed_row_and_the_store_reconnects(
    postgres_server: PostgresServer, open_pg: Callable[..., PostgresState],
) -> None:
    store = open_pg(timeout=2.0)
    _receive(store, "1", 5, now=1.0)
    (job_id,) = store.make_jobs_for_stable_series(0, now=2.0)
    claimed = store.claim_job(JobState.QUEUED, JobState.ENHANCING)
    assert claimed is not None
    postgres_server.kill()
    try:
        with pytest.raises(StateError, match="unavailable") as down:
            store.record_instance(sop_uid="1.2.3.9.0", series_uid="1.2.9", study_uid="1.2", sop_class_uid="1",
                                  modality="CT", size=1, calling_aet="CT01")
        assert "127.0.0.1" in str(down.value)
        with pytest.raises(StateError):
            store.check_writable()  # what /healthz asks
    finally:
        postgres_server.start()
    store.check_writable()  # the pool replaced its broken connections by itself
    assert store.instance_count() == 5 and store.recorded_sop_uids("1.2.9") == set()
    job = store.job(job_id)
    assert (job.state, job.owner, job.instance_count) == (JobState.ENHANCING, store.worker_id, 5)
    store.finish_enhancement(job_id, destinations=["x"], derived_count=5, psnr=None, ssim=None, seconds=0)
    assert store.job(job_id).state is JobState.ENHANCED


def test_no_password_in_errors_or_descriptions() -> None:
    url = f"postgresql://gw:s3cret-pw@127.0.0.1:{free_port()}/state?password=s3cret-pw&sslmode=disable"
    assert pg_schema.redact(url) == "postgresql://gw:***@127.0.0.1:" + url.split(":")[3].split("/")[0] + (
        "/state?password=***&sslmode=disable")
    with pytest.raises(StateError) as refused:
        PostgresState(url, timeout=2.0)
    assert "s3cret-pw" not in str(refused.value) and "gw:***@127.0.0.1" in str(refused.value)


# --- the methods the contract suite does not exercise, on both stores -------------------------------------------


def _scenario(state: StateStore) -> list[Any]:
    """Drive every remaining method; what each returns, with ids and wall-clock times left out."""
    seen: list[Any] = []

    def job(job_id: int) -> dict[str, Any]:
        d = dataclasses.asdict(state.job(job_id))
        return {k: v for k, v in d.items()
                if k not in ("id", "created_at", "updated_at", "finished_at", "reviewed_at", "next_try_at", "owner",
                             "lease_expires_at")}

    _receive(state, "1", 2, now=10.0, study="1.2")
    _receive(state, "2", 1, now=10.0, study="1.2")
    _receive(state, "3", 1, now=10.0, study="1.3")
    seen.append(sorted((s.series_uid, s.instances, s.sample_sop_uid) for s in state.study_series("1.2")))
    group = state.make_study_jobs(["1.2.1", "1.2.2"], "g1", now=20.0)
    (single,) = state.make_jobs_for_stable_series(0, now=20.0, exclude=["1.2.1"])
    seen.append([job(j) for j in (*group, single)])
    # group rule: the first member enhanced is not delivered while the other still waits to be enhanced
    first = state.claim_job(JobState.QUEUED, JobState.ENHANCING)
    assert first is not None and first.id == group[0]
    state.set_job_enhancer(first.id, "nlm", "1", "2.25.1", "cpu")
    hold = QaOutcome(qa_verdict=QaVerdict.FAIL, qa_action=QaAction.HOLD, qa_reasons="lowpass")
    seen.append(state.finish_enhancement(first.id, destinations=["a", "b"], derived_count=2, psnr=30.0, ssim=0.8,
                                         seconds=1.5, qa=hold))
    seen.append(state.qa_verdict_counts())
    with pytest.raises(StateError, match="not held"):
        state.reject(group[1])
    second = state.claim_job(JobState.QUEUED, JobState.ENHANCING)
    assert second is not None and second.id == group[1]
    seen.append(state.requeue_job(second.id, "waiting for disk space"))
    seen.append(job(second.id))
    second = state.claim_job(JobState.QUEUED, JobState.ENHANCING)
    assert second is not None
    seen.append(state.fail_job(second.id, JobState.ENHANCING, "undecodable", base=1, cap=1, max_attempts=3,
                               permanent=True))
    seen.append(job(second.id))
    seen.append(state.claim_delivery("a"))  # held: never claimed
    seen.append(job(state.release(first.id).id))
    claim = state.claim_delivery(None, known=["a"])
    assert claim is not None
    seen.append((claim[1].destination, claim[1].state, claim[0].state))
    seen.append(state.settle_job(first.id))  # "a" is still pending, "b" in flight: the job stays sending
    state.delivery_waiting(first.id, "b", "disk full", retry_in=3600)
    seen.append([(d.destination, d.state, d.attempts, d.last_error) for d in state.deliveries(first.id)])
    seen.append(state.skip_job(single, "not an image"))
    seen.append(job(single))
    oldest = state.oldest_waiting()
    seen.append(None if oldest is None else oldest.series_uid)
    seen.append(state.counts())
    # reprocess, purge, restore
    reprocess = state.make_reprocess_job("1.2.1", enhancer="bm3d", only_destination="a", strength=0.5)
    seen.append(job(reprocess))
    with pytest.raises(StateError, match="no instances"):
        state.make_reprocess_job("9.9", enhancer=None, only_destination=None)
    seen.append(sorted(i.sop_uid for i in state.job_instances(reprocess)))
    instances, jobs = state.purgeable(older_than=1e12)
    seen.append((sorted(i.sop_uid for i in instances), len(jobs)))
    state.mark_purged(["1.2.3.3.0"])
    seen.append((state.instance_purged("1.2.3.3.0"), state.instance_purged("1.2.3.1.0"), state.instance_purged("x")))
    seen.append([(i.sop_uid, i.modality, i.purged_at is not None) for i in state.series_instances("1.3")])
    state.mark_restored("1.2.3.3.0")
    seen.append([(i.sop_uid, i.purged_at) for i in state.series_instances("1.3", "1.2.3")])
    seen.append(sorted((s.study_uid, s.series, s.instances, [j.state for j in s.jobs]) for s in state.studies()))
    seen.append(state.derived_series_number("1.2", "2.25.1", [1001, 1002]))
    seen.append(state.derived_series_number("1.2", "2.25.2", [1001, 1002]))
    with pytest.raises(StateError, match="series_number_offset"):
        state.derived_series_number("1.2", "2.25.3", [1001, 1002])
    # a rejected job: its undelivered deliveries go, the job is final
    third = state.claim_job(JobState.QUEUED, JobState.ENHANCING)
    assert third is not None and third.id == reprocess
    state.finish_enhancement(third.id, destinations=["a"], derived_count=2, psnr=None, ssim=None, seconds=0, qa=hold)
    seen.append((job(state.reject(third.id).id), state.deliveries(third.id)))
    # users and audit
    state.add_user("ann", "admin", "$argon2id$x")
    with pytest.raises(StateError, match="exists"):
        state.add_user("ann", "viewer", "h")
    with pytest.raises(StateError, match="role"):
        state.add_user("bob", "root", "h")
    state.add_user("bob", "viewer", "h1")
    state.set_password("bob", "h2", "admin")
    with pytest.raises(StateError, match="no user"):
        state.set_password("carl", "h")
    state.note_login("ann")
    state.remove_user("ann")
    with pytest.raises(StateError, match="no user"):
        state.remove_user("ann")
    seen.append([(u.name, u.role, u.password_hash, u.last_login_at) for u in state.users()])
    seen.append(state.user("nobody"))
    first_audit = state.record_audit("cli:root", "retry", target="job 1", source="cli")
    state.record_audit("ann", "login", outcome="refused", role="admin", source="10.0.0.1", detail="bad password")
    seen.append([(a.actor, a.action, a.outcome, a.role, a.target, a.source, a.detail, a.id - first_audit)
                 for a in state.audit()])
    seen.append([a.action for a in state.audit(limit=5, actor="ann")])
    state.check_writable()
    return seen


def test_both_stores_answer_alike(tmp_path: Path, open_pg: Callable[..., PostgresState]) -> None:
    sqlite = SqliteState(tmp_path / "state.db")
    try:
        expected = _scenario(sqlite)
    finally:
        sqlite.close()
    assert _scenario(open_pg()) == expected
