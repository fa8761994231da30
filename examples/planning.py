"""A small planning domain whose service bodies contain no audit code.

Plans are proposed, applied, corrected or cancelled; an executor writes the
plan's resources into a sandbox directory; configuration, entities, sessions
and logins round it off. Every audit point is a decorator: the extractors
beside the services choose what each event records.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditaspect import Call, EventType, audited, get_redactor, token_prefix

# -- the domain ------------------------------------------------------------


class AuthenticationError(Exception):
    """A login was refused."""


@dataclass
class Plan:
    plan_id: str
    projects: list[str]
    files: list[str]
    status: str = "proposed"
    decision_id: str = field(default_factory=lambda: f"dec-{uuid.uuid4().hex[:8]}")


@dataclass
class LoginResult:
    user: str
    token: str


@dataclass
class Store:
    """In-memory state shared by the services."""

    plans: dict[str, Plan] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    entities: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    sessions: dict[str, str] = field(default_factory=dict)
    users: dict[str, str] = field(default_factory=dict)  # name -> password hash


# -- what each event records ---------------------------------------------------


def plan_applied(call: Call) -> dict[str, Any]:
    plan: Plan = call.arguments["plan"]
    return {
        "plan_id": plan.plan_id,
        "projects": plan.projects,
        "files_changed": len(plan.files),
        "validation": call.result["validation"],
        "actor": call.arguments["user"],
    }


def plan_cancelled(call: Call) -> dict[str, Any]:
    return {
        "plan_id": call.arguments["plan_id"],
        "reason": call.arguments["reason"],
        "resources_released": call.result,
    }


def resource_modified(call: Call) -> dict[str, Any]:
    return {
        "plan_id": call.arguments["plan_id"],
        "resource_id": call.arguments["resource_id"],
        "modification": call.result["modification"],
        "sandbox_path": call.result["path"],
        "tool": call.arguments["tool"],
    }


def correction_applied(call: Call) -> dict[str, Any]:
    return {
        "plan_id": call.arguments["plan_id"],
        "correction_id": call.result,
        "original_decision_id": call.instance.store.plans[call.arguments["plan_id"]].decision_id,
        "mode": call.arguments["mode"],
        "guidance": call.arguments["guidance"],
    }


def config_changed(call: Call) -> dict[str, Any]:
    key = call.arguments["key"]
    old, new = call.result, call.arguments["value"]
    if get_redactor().is_secret_key(key):
        # The value names no secret-looking key of its own ("value"), so the
        # config key decides: smtp.password's values never reach the log.
        old = new = get_redactor().mask
    return {"key": key, "old_value": old, "new_value": new, "actor": call.arguments["user"]}


def entity_deleted(call: Call) -> dict[str, Any]:
    return {
        "entity_type": call.arguments["entity_type"],
        "entity_name": call.arguments["name"],
        "cascade": call.result,
    }


def session_created(call: Call) -> dict[str, Any]:
    return {
        "session_id": call.result,
        "actor_name": call.arguments["actor_name"],
        "actor": call.arguments["user"],
    }


def login_attempt(call: Call) -> dict[str, Any]:
    details: dict[str, Any] = {"actor": call.arguments["user"], "ip": call.arguments["ip"]}
    if call.error is not None:
        details["reason"] = str(call.error)
    else:
        details["token_prefix"] = token_prefix(call.result.token)
    return details


# -- the services: decorators only ---------------------------------------------


class PlanService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def propose(self, projects: list[str], files: list[str]) -> Plan:
        plan = Plan(plan_id=f"plan-{uuid.uuid4().hex[:8]}", projects=projects, files=files)
        self.store.plans[plan.plan_id] = plan
        return plan

    @audited(EventType.PLAN_APPLIED, plan_applied)
    def apply(self, plan: Plan, *, user: str) -> dict[str, Any]:
        if plan.status != "proposed":
            raise ValueError(f"plan {plan.plan_id} is {plan.status}, not proposed")
        plan.status = "applied"
        return {"validation": {"lint": "passed", "tests": "passed"}}

    @audited(EventType.PLAN_CANCELLED, plan_cancelled)
    def cancel(self, plan_id: str, reason: str) -> list[str]:
        plan = self.store.plans[plan_id]
        plan.status = "cancelled"
        return [f"lock:{name}" for name in plan.projects]

    @audited(EventType.CORRECTION_APPLIED, correction_applied)
    def correct(self, plan_id: str, guidance: str, mode: str = "amend") -> str:
        self.store.plans[plan_id].status = "proposed"
        return f"corr-{uuid.uuid4().hex[:8]}"


class Executor:
    """Writes a plan's resources into a sandbox directory."""

    def __init__(self, sandbox: Path) -> None:
        self.sandbox = sandbox

    @audited(EventType.RESOURCE_MODIFIED, resource_modified)
    def write_resource(
        self, plan_id: str, resource_id: str, content: str, tool: str = "file_writer"
    ) -> dict[str, str]:
        path = self.sandbox / plan_id / resource_id
        modification = "update" if path.exists() else "create"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        return {"path": str(path), "modification": modification}


class ConfigService:
    def __init__(self, store: Store) -> None:
        self.store = store

    @audited(EventType.CONFIG_CHANGED, config_changed)
    def set_value(self, key: str, value: Any, *, user: str) -> Any:
        old = self.store.config.get(key)
        self.store.config[key] = value
        return old


class EntityService:
    def __init__(self, store: Store) -> None:
        self.store = store

    @audited(EventType.ENTITY_DELETED, entity_deleted)
    def delete(self, entity_type: str, name: str) -> list[str]:
        return self.store.entities.pop((entity_type, name), [])


class SessionService:
    def __init__(self, store: Store) -> None:
        self.store = store

    @audited(EventType.SESSION_CREATED, session_created)
    def create(self, actor_name: str, *, user: str) -> str:
        session_id = f"sess-{uuid.uuid4().hex[:12]}"
        self.store.sessions[session_id] = actor_name
        return session_id


def _hash(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


class AuthService:
    def __init__(self, store: Store) -> None:
        self.store = store

    def register(self, user: str, password: str) -> None:
        self.store.users[user] = _hash(password)

    @audited(EventType.AUTH_SUCCESS, login_attempt, on_error=EventType.AUTH_FAILURE)
    def login(self, user: str, password: str, ip: str) -> LoginResult:
        known = self.store.users.get(user)
        if known is None:
            raise AuthenticationError("unknown user")
        if not secrets.compare_digest(known, _hash(password)):
            raise AuthenticationError("wrong password")
        return LoginResult(user=user, token=f"sk-live-{secrets.token_urlsafe(24)}")
