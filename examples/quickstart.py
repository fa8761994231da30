"""Run a day in the planning domain and print the audit log it leaves behind.

    python examples/quickstart.py [sqlite:///audit.db]

Produces all nine security events into ./audit.db (or the URL given) through
a synchronous PeeweeSink, then prints this run's rows as a table. The service
code in planning.py contains no audit calls: only decorators.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import uuid
from pathlib import Path

from auditaspect import AuditRecord, PeeweeSink, audit_context
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


def run_scenario(sandbox: Path) -> None:
    """Exercise every audited operation once (and one failed login)."""
    store = Store(entities={("project", "legacy-billing"): ["repo:legacy-billing", "ci:nightly"]})
    auth, sessions = AuthService(store), SessionService(store)
    plans, executor = PlanService(store), Executor(sandbox)
    config, entities = ConfigService(store), EntityService(store)
    auth.register("alice", "correct horse battery staple")

    with audit_context(ip="203.0.113.7"):
        with contextlib.suppress(AuthenticationError):  # recorded as auth_failure
            auth.login("alice", "hunter2", ip="203.0.113.7")
        auth.login("alice", "correct horse battery staple", ip="203.0.113.7")

    with audit_context(actor="alice", ip="203.0.113.7"):
        sessions.create("deploy-bot", user="alice")
        plan = plans.propose(["billing", "invoices"], ["billing/api.py", "invoices/models.py"])
        executor.write_resource(plan.plan_id, "billing-api.py", "print('v2')\n")
        plans.correct(plan.plan_id, guidance="keep the v1 endpoint for a week")
        plans.apply(plan, user="alice")
        other = plans.propose(["reports"], ["reports/monthly.sql"])
        plans.cancel(other.plan_id, reason="superseded by the billing plan")
        config.set_value("smtp.password", "s3cret-Pa55", user="alice")
        config.set_value("feature.dark_mode", True, user="alice")
        entities.delete("project", "legacy-billing")


def print_log(rows: list[AuditRecord]) -> None:
    """Print rows as a fixed-width table."""
    header = ("id", "time (UTC)", "event", "outcome", "actor", "plan", "ip", "details")
    table = [
        (
            str(r.id),
            r.timestamp.strftime("%H:%M:%S.%f")[:-3],
            r.event_type,
            r.outcome,
            r.actor or "",
            r.plan_id or "",
            r.ip or "",
            _short(r.details, r.error),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in table:
        print(line.format(*row))


def _short(details: dict[str, object], error: str | None) -> str:
    shown = {k: v for k, v in details.items() if k not in ("actor", "plan_id", "ip")}
    text = ", ".join(f"{k}={v}" for k, v in shown.items())
    if error:
        text = f"error={error}; {text}"
    return text if len(text) <= 90 else text[:89] + "…"


def main(url: str = "sqlite:///audit.db") -> int:
    run_id = f"quickstart-{uuid.uuid4().hex[:8]}"
    with PeeweeSink(url) as sink, tempfile.TemporaryDirectory() as sandbox:
        with audit_context(correlation_id=run_id):
            run_scenario(Path(sandbox))
        rows = list(
            AuditRecord.select()
            .where(AuditRecord.correlation_id == run_id)
            .order_by(AuditRecord.id)
        )
        print(f"{len(rows)} audit events written to {url} (correlation id {run_id}):\n")
        print_log(rows)
        if sink.stats.failed:
            print(f"\n{sink.stats.failed} events could not be written", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
