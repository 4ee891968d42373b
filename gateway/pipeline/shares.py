"""The shares stage: what the caller's share of the node is, for one request.

A node in a clinic or a household is shared; who gets what is decided here
once per inference request, after access and the body, and left on the
request (``SHARE``) for every stage after it:

* the **tier**, which the usage stage takes the caller's budgets from: the
  API key's own (made with ``--tier``), its configured tier
  (``quota_api_key_tiers``), or the Firebase tier claim (usage/quota.py);
* the **priority class**, the queue the caller waits in for one of the
  node's slots (admission.py), highest precedence first: the API key's own
  (made with ``--class``), the Firebase class claim
  (``priority_class_claim``), the tier's class (``priority_tier_classes``),
  the default class. A name this node does not know is the default class.

A request a member of the fog handed to this node brings the class its
entry node decided, in the entry's assertion of the caller (fog/hop.py):
one identity, one class, whichever node serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from aiohttp import web
from aiohttp.typedefs import Handler

from ...auth.principal import Principal
from ...usage.options import QuotaOptions
from ...usage.quota import tier_of
from ..core.keys import FORWARDED, PRINCIPAL, SHARE, Share
from .admission import Classes
from .routes import spec_for


@dataclass(frozen=True)
class ShareOptions:
    """``class_claim``: the Firebase custom claim that names a user's class;
    ``tier_classes``: the class of each tier (tier name -> class name)."""

    classes: Classes = field(default_factory=Classes)
    quota: QuotaOptions = field(default_factory=QuotaOptions)
    class_claim: str = "fog_class"
    tier_classes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.tier_classes.values()) - set(self.classes.names))
        if unknown:
            raise ValueError(f"tiers are given classes that are not defined: {unknown}")
        object.__setattr__(self, "tier_classes", MappingProxyType(dict(self.tier_classes)))


class Shares:
    """Tier and class of a caller, by the node's rules."""

    def __init__(self, options: ShareOptions) -> None:
        self.options = options

    def of(self, principal: Principal | None) -> Share:
        options = self.options
        if principal is None:
            return Share(None, options.classes.default)
        # auth/api_keys.py names an API key's caller `apikey:<name>`; a key made
        # with a tier or a class has them ahead of every other rule.
        key_name = principal.uid.removeprefix("apikey:") if principal.kind == "api_key" else None
        tier = principal.tier or tier_of(
            options.quota, claims=principal.claims, api_key_name=key_name
        )
        if principal.priority is not None:
            return Share(tier, options.classes.known(principal.priority))
        claimed = principal.claims.get(options.class_claim)
        if isinstance(claimed, str) and claimed in options.classes.names:
            return Share(tier, claimed)
        if tier is not None and tier in options.tier_classes:
            return Share(tier, options.tier_classes[tier])
        return Share(tier, options.classes.default)

    def forwarded(self, priority: str | None) -> Share:
        """A member's request: the class its entry node decided, as this node
        knows it (the entry records the usage, so no tier is needed here)."""
        return Share(None, self.options.classes.known(priority))


SHARES = web.AppKey("fognode.shares", Shares)


def setup_shares(app: web.Application, options: ShareOptions) -> Shares:
    """Install the stage; the rules are on the app (``SHARES``) for the routes
    that tell callers their share (the usage endpoint)."""
    shares = app[SHARES] = Shares(options)

    @web.middleware
    async def share_stage(request: web.Request, handler: Handler) -> web.StreamResponse:
        spec = spec_for(request)
        if spec is not None and spec.limited:
            forwarded = request.get(FORWARDED)
            request[SHARE] = (
                shares.forwarded(forwarded.priority)
                if forwarded is not None
                else shares.of(request.get(PRINCIPAL))
            )
        return await handler(request)

    app.middlewares.append(share_stage)
    return shares
