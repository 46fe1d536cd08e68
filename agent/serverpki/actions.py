"""The actions of operate_serverPKI: each is one call of its SQL function (which
validates the selection and enqueues), followed by draining the queue."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import psycopg

from .agent import Agent, RunStats

log = logging.getLogger("serverpki.operate")

# seed order: CA first, keys, then create, distribute, consolidate, TLSA
REQUESTS: dict[str, str] = {
    "-I": "SELECT job, NULL::text, NULL::int, 'requested (-I)' FROM (SELECT request_local_ca(%(ca_name)s, %(ca_algo)s) AS job) x",
    "-X": "SELECT request_key_encryption(true), NULL::text, NULL::int, 'requested (-X)'",
    "-Y": "SELECT request_key_encryption(false), NULL::text, NULL::int, 'requested (-Y)'",
    "-S": "SELECT NULL::bigint, certificate, instance, action || ': ' || reason FROM schedule({sel})",
    "-C": "SELECT job, certificate, instance, reason FROM request_create({sel}, %(remaining)s)",
    "-D": "SELECT job, certificate, instance, reason FROM request_distribute({sel}, %(remaining)s)",
    "-K": "SELECT job, certificate, instance, reason FROM request_consolidate_certs({sel})",
    "-T": "SELECT job, certificate, instance, reason FROM request_consolidate_tlsa({sel})",
    "-R": "SELECT job, certificate, instance, reason FROM request_remove_tlsa({sel})",
    "-Z": "SELECT request_acme_account(%(acme_url)s, %(acme_contact)s), NULL::text, NULL::int, 'requested (-Z)'",
}


# the scheduler's rows that change nothing but must reach the operator (schedule(): action: reason)
WARNING_ACTIONS = ("warn:", "overdue:")


@dataclass
class Outcome:
    requested: list[tuple]
    stats: RunStats
    unhandled: list[tuple[str, int]]


def run_action(conn: psycopg.Connection, agent: Agent, action: str, sel_sql: str, sel_params: dict,
               params: dict) -> Outcome:
    """Ask SQL to enqueue what the action means, then run what is due of the run's selection."""
    with conn.transaction():
        requested = conn.execute(REQUESTS[action].replace("{sel}", sel_sql), {**params, **sel_params}).fetchall()
    for job, cert, inst, reason in requested:
        # -S rows 'warn' (-N: you keep DNS) and 'overdue' (in service past not_after) need a human
        level = logging.WARNING if action == "-S" and reason.startswith(WARNING_ACTIONS) else logging.INFO
        log.log(level, "%s: %s%s%s", action, f"{cert} " if cert else "", f"instance {inst} " if inst else "",
                reason if job is None else f"job {job}: {reason}")
    # only the jobs of the run's selection (the agent's), and those this request returned
    stats = agent.drain(requested=[job for job, *_ in requested])
    return Outcome(requested, stats, agent.unhandled_pending())
