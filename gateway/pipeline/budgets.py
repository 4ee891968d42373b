"""``GET /v1/fognode/usage``: what a caller has used today and has left, before it bites.

A client learns its budget from the ``x-ratelimit-*`` headers of an answer
only after it asked for one, and only for limits that are set. An app that
is about to start a long job asks here first: today's tokens and this
minute's requests, each with its limit, what is used (the node's records,
those not yet stored, and the reservations of requests in flight: what the
next quota check will count), what is left, and when it resets; the
caller's tier and priority class; and which budgets are past the node's
warning share (``quota_warn_at``).

Any authenticated caller gets their own; an administrator anyone's, with
``?user=UID`` (an API key's caller is ``apikey:NAME``). A Firebase user's
tier and class come from their token, which only they send: for another
Firebase user the answer says so and counts their usage against the
default tier's limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from ...auth.principal import Access, Principal
from ...usage.ledger import QuotaLedger
from ...usage.options import QuotaOptions
from ...usage.quota import Budget, budgets, day_bounds, limits_for
from ...usage.when import iso_utc
from ..core.errors import GatewayError
from ..core.keys import PRINCIPAL
from .access import AUTHORIZER
from .routes import RouteSpec, add_route
from .shares import Shares

PATH = "/v1/fognode/usage"


def caller_named(request: web.Request, uid: str) -> Principal:
    """Another caller, as far as the node knows them without their credential:
    an API key of this node as it was made (its tier and class)."""
    if uid.startswith("apikey:"):
        known = request.app[AUTHORIZER].key_caller(uid.removeprefix("apikey:"))
        return known or Principal(uid=uid, kind="api_key")
    return Principal(uid=uid, kind="firebase")


class UsageEndpoint:
    def __init__(
        self,
        ledger: QuotaLedger | None,
        shares: Shares,
        quota: QuotaOptions,
        *,
        caller: Callable[[web.Request, str], Principal] = caller_named,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger  # None: the node keeps no usage
        self.shares = shares
        self.quota = quota
        self.caller = caller
        self.clock = clock

    async def answer(self, request: web.Request) -> web.Response:
        asker = request[PRINCIPAL]
        subject, told = asker, True
        wanted = request.query.get("user")
        if wanted is not None and wanted != asker.uid:
            if not asker.is_admin:
                raise GatewayError(
                    403,
                    "Only an administrator may ask for another user's usage; leave out "
                    "?user= for your own.",
                    type="permission_error",
                    param="user",
                    code="admin_required",
                )
            if not wanted or len(wanted) > 512:
                raise GatewayError(400, "?user= names no user.", param="user", code="invalid_user")
            subject = self.caller(request, wanted)
            told = subject.kind == "api_key"
        return web.json_response(await self.view(subject, told=told))

    async def view(self, subject: Principal, *, told: bool) -> dict[str, object]:
        share = self.shares.of(subject)
        body: dict[str, object] = {
            "object": "fognode.usage",
            "user": subject.uid,
            "tier": share.tier,
            "class": share.priority,
        }
        if not told:
            body["note"] = (
                "A Firebase user's tier and class come from their token: shown are the "
                "default's, and their usage counted against the default limits."
            )
        if self.ledger is None:
            return body | {"accounting": False, "tokens": None, "requests": None}
        now = self.clock()
        _, day_end = day_bounds(now, self.quota.day_start)
        limits = limits_for(self.quota, share.tier)
        used = await self.ledger.usage(subject.uid)
        found = budgets(limits, used, now=now, day_end=day_end)
        warn_at = self.quota.warn_at
        return body | {
            "accounting": True,
            "tokens": _budget(found["tokens"], now, "day"),
            "requests": _budget(found["requests"], now, "minute"),
            "warn_at": warn_at or None,
            "warnings": [name for name, b in found.items() if b.near(warn_at)],
        }


def _budget(budget: Budget, now: float, period: str) -> dict[str, object]:
    return {
        "period": period,
        "limit": budget.limit,
        "used": budget.used,
        "remaining": budget.remaining,
        "resets_at": iso_utc(budget.resets),
        "resets_in_seconds": round(max(0.0, budget.resets - now), 3),
    }


def setup_usage_endpoint(app: web.Application, endpoint: UsageEndpoint) -> None:
    add_route(app, RouteSpec("GET", PATH, Access.USER), endpoint.answer)
