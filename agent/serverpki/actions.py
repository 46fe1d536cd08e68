"""The actions of operate_serverPKI: each is one call of its SQL function (which
validates the selection and enqueues), followed by draining the queue."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from .agent import Agent, RunStats
from .log import one_line
from .queries import q

log = logging.getLogger("serverpki.operate")

# seed order: CA first, keys, then create, distribute, consolidate, TLSA; each its named query (queries.sql)
REQUESTS: dict[str, str] = {
    "-I": "request_local_ca",
    "-X": "request_encrypt_keys",
    "-Y": "request_decrypt_keys",
    "-S": "request_schedule",
    "-C": "request_create",
    "-D": "request_distribute",
    "-K": "request_consolidate_certs",
    "-T": "request_consolidate_tlsa",
    "-R": "request_remove_tlsa",
    "-Z": "request_acme_account",
    "--revoke": "request_revoke",
}


# the scheduler's rows that change nothing but must reach the operator (schedule(): action: reason)
WARNING_ACTIONS = ("warn:", "overdue:")


@dataclass
class Outcome:
    requested: list[tuple]
    stats: RunStats
    unhandled: list[tuple[str, int]]


def run_action(conn: psycopg.Connection, agent: Agent, action: str, sel_params: dict, params: dict) -> Outcome:
    """Ask SQL to enqueue what the action means, then run what is due of the run's selection."""
    with conn.transaction():
        requested = conn.execute(q(REQUESTS[action]), {**params, **sel_params}).fetchall()
    for job, cert, inst, reason in requested:
        # -S rows 'warn' (-N: you keep DNS) and 'overdue' (in service past not_after) need a human
        level = logging.WARNING if action == "-S" and reason.startswith(WARNING_ACTIONS) else logging.INFO
        log.log(level, "%s: %s%s%s", action, f"{one_line(cert)} " if cert else "", f"instance {inst} " if inst else "",
                reason if job is None else f"job {job}: {reason}")
    # only the jobs of the run's selection (the agent's), and those this request returned
    stats = agent.drain(requested=[job for job, *_ in requested], label=f"{action} jobs")
    return Outcome(requested, stats, agent.unhandled_pending())
