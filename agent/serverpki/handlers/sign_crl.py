"""sign_crl: the next CRL of a local CA instance, before its newest one reaches its nextUpdate.

The scheduler enqueues it (db/functions/155_crls.sql, crl_plan_rows); the CRL is signed as a
revoke job signs one (handlers/revoke.py sign_crl: every unexpired certificate revoked under the
instance, the next number, valid for crl_days), and complete_sign_crl stores it and sends it to
the CA's targets.
"""

from __future__ import annotations

from . import Completion, Context, Job, handler
from .revoke import sign_crl


@handler("sign_crl")
def sign_next_crl(job: Job, ctx: Context) -> Completion:
    args, report = sign_crl(job, ctx, job.instance)
    return Completion(args=args, report=report)
