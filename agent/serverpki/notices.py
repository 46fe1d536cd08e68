"""Telling what needs a human: every operate_serverPKI run that acts, and `serverpki agent`, ask the
database for a notify_alerts job per configured channel ([alerts]: mail, webhook) and run it. The
database decides what is new (pki.request_alert_notices, db/jobs/070_notify_alerts.sql); an empty
digest enqueues nothing, so asking often costs one query."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .config import Config
from .queries import q

if TYPE_CHECKING:
    from .agent import Agent, RunStats

log = logging.getLogger("serverpki.alerts")


def channels(config: Config) -> list[str]:
    """The channels alerts go to with this configuration (none: nothing is asked)."""
    return config.alerts.channels


def tell(agent: "Agent") -> "RunStats | None":
    """Request the notices of the agent's configured channels and run the jobs the request returned;
    None when there is nothing to run (no channel configured, nothing new)."""
    wanted = channels(agent.config)
    if not wanted:
        return None
    rows = agent.conn.execute(q("request_alert_notices"), {"channels": wanted}).fetchall()
    for _job, _cert, _inst, reason in rows:
        log.info("%s", reason)
    jobs = [job for job, *_ in rows if job is not None]
    return agent.drain(requested=jobs) if jobs else None
