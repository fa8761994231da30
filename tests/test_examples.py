"""The example planning domain end to end: nine events into a real SQLite file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from auditaspect import AuditRecord, EventType, PeeweeSink, audit_context, emit
from planning import (
    AuthenticationError,
    AuthService,
    ConfigService,
    EntityService,
    Executor,
    PlanService,
    SessionService,
    Store,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def store() -> Store:
    return Store(entities={("project", "old"): ["repo:old", "ci:old"]})


def only_row(event_type: str) -> AuditRecord:
    rows = list(AuditRecord.select().where(AuditRecord.event_type == event_type))
    assert 1 == len(rows), rows
    return rows[0]


def test_plan_applied(sink, store):
    """Applying a plan records plan id, projects, files changed, validation and user."""
    plans = PlanService(store)
    plan = plans.propose(["billing", "invoices"], ["a.py", "b.py", "c.py"])
    plans.apply(plan, user="alice")
    row = only_row("plan_applied")
    assert (plan.plan_id, "alice") == (row.plan_id, row.actor)
    assert {
        "plan_id": plan.plan_id,
        "projects": ["billing", "invoices"],
        "files_changed": 3,
        "validation": {"lint": "passed", "tests": "passed"},
        "actor": "alice",
    } == row.details


def test_plan_cancelled(sink, store):
    """Cancelling records plan id, reason and released resources."""
    plans = PlanService(store)
    plan = plans.propose(["reports"], [])
    plans.cancel(plan.plan_id, reason="superseded")
    row = only_row("plan_cancelled")
    assert {
        "plan_id": plan.plan_id,
        "reason": "superseded",
        "resources_released": ["lock:reports"],
    } == row.details


def test_resource_modified(sink, tmp_path):
    """A tool write records resource id, modification type, sandbox path and tool."""
    executor = Executor(tmp_path / "sandbox")
    executor.write_resource("plan-1", "api.py", "v1")
    executor.write_resource("plan-1", "api.py", "v2", tool="patcher")
    rows = list(AuditRecord.select().where(AuditRecord.event_type == "resource_modified"))
    assert ["create", "update"] == [r.details["modification"] for r in rows]
    assert {
        "plan_id": "plan-1",
        "resource_id": "api.py",
        "modification": "update",
        "sandbox_path": str(tmp_path / "sandbox" / "plan-1" / "api.py"),
        "tool": "patcher",
    } == rows[1].details


def test_correction_applied(sink, store):
    """Correcting records correction id, original decision id, mode and guidance."""
    plans = PlanService(store)
    plan = plans.propose(["x"], [])
    correction_id = plans.correct(plan.plan_id, guidance="smaller steps", mode="replace")
    row = only_row("correction_applied")
    assert {
        "plan_id": plan.plan_id,
        "correction_id": correction_id,
        "original_decision_id": plan.decision_id,
        "mode": "replace",
        "guidance": "smaller steps",
    } == row.details


def test_config_changed_masks_secret_keys(sink, store):
    """Config changes record key, old and new value, masked when the key is secret."""
    config = ConfigService(store)
    config.set_value("theme", "dark", user="alice")
    config.set_value("theme", "light", user="alice")
    config.set_value("smtp.password", "s3cret-Pa55", user="alice")
    config.set_value("webhook", "https://bot:hunter2@hooks.example/x", user="bob")
    rows = list(AuditRecord.select().where(AuditRecord.event_type == "config_changed"))
    assert {"key": "theme", "old_value": "dark", "new_value": "light", "actor": "alice"} == rows[
        1
    ].details
    assert "[REDACTED]" == rows[2].details["new_value"]
    assert "hunter2" not in rows[3].details["new_value"]
    assert ["alice", "alice", "alice", "bob"] == [r.actor for r in rows]


def test_entity_deleted(sink, store):
    """Deleting records entity type, name and cascade effects."""
    EntityService(store).delete("project", "old")
    row = only_row("entity_deleted")
    assert {
        "entity_type": "project",
        "entity_name": "old",
        "cascade": ["repo:old", "ci:old"],
    } == row.details


def test_session_created(sink, store):
    """Creating a session records session id, actor name and user."""
    session_id = SessionService(store).create("deploy-bot", user="alice")
    row = only_row("session_created")
    assert {"session_id": session_id, "actor_name": "deploy-bot", "actor": "alice"} == row.details
    assert "alice" == row.actor


def test_auth_success_records_token_prefix_only(sink, store):
    """A login records user, IP and only the token's prefix."""
    auth = AuthService(store)
    auth.register("alice", "pw")
    result = auth.login("alice", "pw", ip="203.0.113.9")
    row = only_row("auth_success")
    assert ("alice", "203.0.113.9") == (row.actor, row.ip)
    assert result.token[:5] + "…" == row.details["token_prefix"]
    assert result.token[8:] not in str(row.details)


def test_auth_failure_records_attempt_ip_and_reason(sink, store):
    """A failed login records attempted identity, IP and reason, never the password."""
    auth = AuthService(store)
    auth.register("alice", "right")
    with pytest.raises(AuthenticationError):
        auth.login("alice", "hunter2-guess", ip="198.51.100.23")
    row = only_row("auth_failure")
    assert ("failure", "alice", "198.51.100.23") == (row.outcome, row.actor, row.ip)
    assert "wrong password" == row.details["reason"]
    assert "AuthenticationError: wrong password" == row.error
    assert "hunter2-guess" not in str(row.details)


def test_integration_apply_plan_reads_back_through_auditrecord(tmp_path, store):
    """A plan applied in the example domain lands in a real SQLite file, read back by model."""
    path = tmp_path / "integration.db"
    with PeeweeSink(f"sqlite:///{path}"):
        plans = PlanService(store)
        plan = plans.propose(["billing"], ["api.py"])
        with audit_context(actor="alice", ip="192.0.2.1", correlation_id="req-42"):
            plans.apply(plan, user="alice")
    assert path.exists()
    with PeeweeSink(f"sqlite:///{path}"):  # a new sink, as another process would
        [row] = AuditRecord.select().where(AuditRecord.plan_id == plan.plan_id)
        assert ("plan_applied", "alice", "192.0.2.1", "req-42") == (
            row.event_type,
            row.actor,
            row.ip,
            row.correlation_id,
        )
        assert row.target.endswith("PlanService.apply")


PLANTED: dict[str, Any] = {
    "password": "Planted-Pa55word-1",
    "api_key": "planted-api-key-value-2",
    "bearer": "Bearer plantedbearertoken3abc",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJwbGFudGVkIjoiNCJ9.cGxhbnRlZC1zaWduYXR1cmUtNA",
    "aws": "AKIAPLANTED5EXAMPLEX",
    "url": "postgresql://app:Planted-url-pass-6@db/x",
    "sk": "sk-live-planted7abcdefghijklmnop",
    "ghp": "ghp_planted8abcdefghijklmnopqrstuvwxyz",
    "pem": "-----BEGIN PRIVATE KEY-----\nPLANTEDPEMKEY9MATERIAL\n-----END PRIVATE KEY-----",
}
NEEDLES = [
    b"Planted-Pa55word-1",
    b"planted-api-key-value-2",
    b"plantedbearertoken3abc",
    b"cGxhbnRlZC1zaWduYXR1cmUtNA",
    b"AKIAPLANTED5EXAMPLEX",
    b"Planted-url-pass-6",
    b"planted7abcdefghijklmnop",
    b"ghp_planted8",
    b"PLANTEDPEMKEY9MATERIAL",
    b"s3cret-config-10",
    b"wrong-guess-11",
]


def test_raw_database_bytes_hold_none_of_the_planted_secrets(tmp_path, store):
    """Secrets planted in arguments, results, errors and hand-sent events never reach the file."""
    path = tmp_path / "secrets.db"
    with PeeweeSink(f"sqlite:///{path}"):
        ConfigService(store).set_value("smtp.password", "s3cret-config-10", user="alice")
        auth = AuthService(store)
        auth.register("alice", "right")
        with pytest.raises(AuthenticationError):
            auth.login("alice", "wrong-guess-11", ip="192.0.2.5")
        for name, secret in PLANTED.items():
            emit("config_changed", key=name, **{name: secret})  # under a secret-like key
            if name not in ("password", "api_key"):  # secret-looking: under any key
                emit("config_changed", key=name, note=f"value is {secret}")
        ConfigService(store).set_value("dsn", PLANTED["url"], user="alice")
        # Read while the WAL still holds the pages, then again after checkpoint.
        blobs = [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("secrets.db")]
        assert 19 == AuditRecord.select().count()
    blobs += [p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("secrets.db")]
    for needle in NEEDLES:
        for blob in blobs:
            assert needle not in blob, needle


def test_quickstart_runs_and_prints_nine_event_types(tmp_path):
    """examples/quickstart.py writes all nine event types to ./audit.db and prints them."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == result.returncode, result.stderr
    assert (tmp_path / "audit.db").exists()
    for event_type in (member.value for member in EventType):
        assert event_type in result.stdout
    assert "s3cret-Pa55" not in result.stdout


def _rows(db: Path) -> list[tuple[Any, ...]]:
    from webservers import audit_rows

    return audit_rows(db, "event_type, outcome, actor, error")


def test_fastapi_example(tmp_path):
    """examples/fastapi_app.py: a failed login, a good one, a config change by a token user."""
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from fastapi_app import create_app

    db = tmp_path / "fastapi.db"
    app = create_app(f"sqlite:///{db}")
    with TestClient(app) as client:
        wrong = {"username": "alice", "password": "wrong"}
        assert 401 == client.post("/login", json=wrong).status_code
        right = {"username": "alice", "password": "correct-horse-battery-staple"}
        token = client.post("/login", json=right).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        assert (
            200 == client.put("/config/theme", json={"value": "dark"}, headers=headers).status_code
        )
    app.state.audit_sink.close()
    assert [
        ("auth_failure", "failure", None, "HTTP 401"),
        ("auth_success", "success", "alice", None),
        ("config_changed", "success", "alice", None),
    ] == _rows(db)


def test_django_example_under_runserver(tmp_path):
    """examples/django_project: a real runserver, then `manage.py auditaspect query`."""
    pytest.importorskip("django")
    from webservers import free_port, request, running

    project = ROOT / "examples" / "django_project"
    db = tmp_path / "django.db"
    port = free_port()
    env = {"AUDIT_URL": f"sqlite:///{db}"}
    command = [sys.executable, str(project / "manage.py"), "runserver", "--noreload"]
    with running([*command, f"127.0.0.1:{port}"], cwd=project, env=env, port=port):
        assert 401 == request(port, "POST", "/login", form={"username": "alice"})[0]
        good = {"username": "alice", "password": "correct-horse-battery-staple"}
        assert 200 == request(port, "POST", "/login", form=good)[0]
        form = {"value": "dark"}
        assert (
            200 == request(port, "POST", "/config/theme", form=form, headers={"X-User": "bob"})[0]
        )
    assert [
        ("auth_failure", "failure", None, "HTTP 401"),
        ("auth_success", "success", "alice", None),
        ("config_changed", "success", "bob", None),
    ] == _rows(db)
    import os

    done = subprocess.run(
        [sys.executable, str(project / "manage.py"), "auditaspect", "verify"],
        cwd=project,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert "3 rows" in done.stdout


def test_celery_example(tmp_path, redis_server):
    """examples/celery_tasks.py: a real worker records the deletion as the queuing user."""
    pytest.importorskip("celery")
    import os

    from webservers import running

    db = tmp_path / "celery.db"
    env = {"REDIS_URL": redis_server, "AUDIT_URL": f"sqlite:///{db}"}
    examples = ROOT / "examples"
    worker = [sys.executable, "-m", "celery", "-A", "celery_tasks", "worker", "-c", "1"]
    worker += ["--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "INFO"]
    with running(worker, cwd=examples, env=env, ready="ready.", timeout=90):
        done = subprocess.run(
            [sys.executable, str(examples / "celery_tasks.py")],
            cwd=examples,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert 0 == done.returncode, done.stderr
    assert "released: ['repo:old', 'ci:old']" in done.stdout
    assert [("entity_deleted", "success", "alice", None)] == _rows(db)
