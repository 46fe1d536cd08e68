"""Fault injection for the crash tests: SERVERPKI_CRASH_AT names a step, and the agent kills
itself with SIGKILL (no cleanup, no finally, no lease given back) when it gets there.

    SERVERPKI_CRASH_AT=issue_acme.challenge_published operate_serverPKI -C -o www.example.com
    SERVERPKI_CRASH_AT=distribute.file_written:2 ...      # the second time the step is reached

Every step is `<job kind>.<step>`; the agent passes `<kind>.claimed` and `<kind>.before_complete`
for every job kind, the handlers the steps between their side effects (STEPS). Unset, a crash
point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "SERVERPKI_CRASH_AT"

# every job kind passes these two (agent.run_job)
AGENT_STEPS = {
    "claimed": "the job is claimed and leased, its handler has not started",
    "before_complete": "the handler has done all its side effects, the job's completion function has not run",
}

# the steps inside handlers, between one side effect and the next
STEPS = {
    "issue_acme.ordered": "the ACME order is placed and its URL saved, no challenge published",
    "issue_acme.challenge_published": "the dns-01 TXT records are in DNS, the challenges not answered",
    "issue_acme.challenges_answered": "the CA was told to validate, the result not seen",
    "issue_acme.finalized": "the order is finalized with the CSR, the certificate not downloaded",
    "distribute.temp_written": "a file's temporary copy is written on the host, not renamed into place",
    "distribute.file_written": "a file is in place (':N' counts them: some targets new, some old)",
    "distribute.files_written": "every file is in place, no reload command run",
    "publish_tlsa.sent": "the signed UPDATE of one zone is sent, its records not yet seen in DNS",
    "revoke.revoked_at_ca": "the ACME CA revoked one certificate of the instance, the job not completed",
}

_reached: Counter = Counter()


def crash_point(step: str) -> None:
    """Kill this process at once when SERVERPKI_CRASH_AT names this step (and count, if given)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, count = wanted.partition(":")
    if name != step:
        return
    _reached[step] += 1
    if _reached[step] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)

