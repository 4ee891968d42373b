"""The settings each stage gets, as small option objects.

One settings model (config/settings.py) holds every setting; the stages and
parts never read it. This module is where a setting becomes the option
object of whoever uses it, for the app (app.py) and for the node's own
services (node/), so a setting is turned into options in one place.
"""

from __future__ import annotations

import socket
from datetime import timedelta

from ..certs.cli import CertsDefaults
from ..certs.peers import load_node_credentials
from ..certs.store import CertPaths
from ..fog.members import MembershipOptions, TableOptions
from ..supervision.breaker import BreakerOptions
from ..usage.options import Limits, QuotaOptions, StoreOptions
from .config.identity import host_name, node_id
from .config.network import lan_addresses
from .config.paths import admin_key_file
from .config.settings import Settings
from .pages.sessions import SessionOptions
from .pages.status import StatusOptions
from .pipeline.admission import Admission, Classes, PriorityClass
from .pipeline.quotas import UsageOptions
from .pipeline.shares import ShareOptions
from .transport.cert_renewal import RenewalOptions
from .transport.peer_tls import PeerFiles, PeerTls
from .transport.tls import TicketKeys, TlsTerminator
from .upstreams.peers import FogOptions
from .upstreams.upstream import UpstreamOptions


def admission_from(settings: Settings) -> Admission:
    return Admission(
        max_concurrent=settings.max_concurrent_requests,
        max_queue=settings.max_queued_requests,
        per_user_concurrent=settings.per_user_concurrent_requests,
        per_user_queue=settings.per_user_queued_requests,
        queue_timeout=settings.queue_timeout,
        classes=classes(settings),
    )


def classes(settings: Settings) -> Classes:
    return Classes(
        tuple(
            PriorityClass(name, settings.priority_max_wait.get(name))
            for name in settings.priority_classes
        ),
        settings.priority_default_class,
    )


def share_options(settings: Settings) -> ShareOptions:
    return ShareOptions(
        classes=classes(settings),
        quota=quota_options(settings),
        class_claim=settings.priority_class_claim,
        tier_classes=settings.priority_tier_classes,
    )


def usage_options(settings: Settings) -> UsageOptions:
    return UsageOptions(
        store=store_options(settings),
        quota=quota_options(settings),
        metrics_per_user=settings.usage_metrics_per_user,
    )


def store_options(settings: Settings) -> StoreOptions:
    url = settings.usage_database_url
    return StoreOptions(
        sqlite_path=None if url is not None else settings.usage_sqlite_path,
        database_url=url.get_secret_value() if url is not None else None,
        flush_records=settings.usage_flush_records,
        flush_seconds=settings.usage_flush_seconds,
        buffer_limit=settings.usage_buffer_limit,
    )


def quota_options(settings: Settings) -> QuotaOptions:
    start = settings.quota_day_start
    return QuotaOptions(
        default=Limits(settings.quota_tokens_per_day, settings.quota_requests_per_minute),
        tiers={
            name: Limits(tier.tokens_per_day, tier.requests_per_minute)
            for name, tier in settings.quota_tiers.items()
        },
        tier_claim=settings.quota_tier_claim,
        api_key_tiers=settings.quota_api_key_tiers,
        day_start=timedelta(hours=start.hour, minutes=start.minute, seconds=start.second),
        default_completion_tokens=settings.quota_default_completion_tokens,
        warn_at=settings.quota_warn_at,
    )


# Connections per upstream beyond the admitted requests: what takes no slot
# (model lists, /api/show, model management, the pool's own checks).
UNADMITTED_CONNECTIONS = 64


def upstream_connections(settings: Settings) -> int:
    """The size of each upstream's connection pool: every admitted request
    gets a connection without waiting (the pool is never the hidden cap)."""
    return settings.upstream_max_connections or (
        settings.max_concurrent_requests + UNADMITTED_CONNECTIONS
    )


def upstream_options(settings: Settings) -> UpstreamOptions:
    return UpstreamOptions(
        kind=settings.upstream_kind,
        connect_timeout=settings.connect_timeout,
        first_byte_timeout=settings.first_byte_timeout,
        max_connections=upstream_connections(settings),
        api_key=settings.upstream_api_key,
        check_interval=settings.upstream_check_interval,
        check_timeout=settings.readiness_timeout,
        max_concurrent=settings.upstream_max_concurrent,
        affinity=settings.upstream_affinity,
        affinity_entries=settings.upstream_affinity_entries,
        affinity_seconds=settings.upstream_affinity_seconds,
        breaker=BreakerOptions(
            failures=settings.upstream_breaker_failures,
            window=settings.upstream_breaker_window,
            cooldown=settings.upstream_breaker_cooldown,
            max_cooldown=settings.upstream_breaker_max_cooldown,
            busy_seconds=settings.upstream_busy_seconds,
        ),
        load_seconds=settings.upstream_load_seconds,
        wait_timeout=settings.queue_timeout,
    )


def renewal_options(settings: Settings) -> RenewalOptions:
    return RenewalOptions(
        renew_before_days=settings.cert_renew_before_days,
        check_interval=settings.cert_check_interval,
    )


def certs_defaults(settings: Settings) -> CertsDefaults:
    """`fognode certs`' defaults: the same directories and names `serve` uses.
    With configured names (FOGNODE_CERT_NAMES) the node's own is not looked
    up: a renewal elsewhere (compose's container) has no node id to read."""
    own = () if settings.cert_names else (host_name(settings, node_id(settings)),)
    return CertsDefaults(
        certs_dir=settings.certs_dir,
        ca_dir=settings.ca_dir,
        issuer_dir=settings.issuer_dir,
        key_type=settings.cert_key_type,
        names=tuple(settings.cert_names or ()),
        validity_days=settings.cert_validity_days,
        renew_before_days=settings.cert_renew_before_days,
        lan_ips=tuple(str(ip) for ip in lan_addresses()),
        node_names=own,
    )


def session_options(settings: Settings) -> SessionOptions:
    return SessionOptions(
        key_file=settings.session_key_file,
        lifetime=settings.session_lifetime,
        body_timeout=settings.body_timeout,
        admin_key_file=admin_key_file(),
    )


def status_options(settings: Settings) -> StatusOptions:
    return StatusOptions(
        node_name=socket.gethostname(),
        node_id=node_id(settings),
        refresh=settings.status_refresh_seconds,
        pull_idle_timeout=settings.idle_timeout,
    )


def terminator(settings: Settings) -> TlsTerminator:
    secret = settings.tls_ticket_secret
    return TlsTerminator(
        settings.server_cert_file,
        settings.server_key_file,
        settings.ca_cert_file,
        TicketKeys(bytes.fromhex(secret.get_secret_value()) if secret is not None else None),
    )


class FogUnavailable(RuntimeError):
    """``fog=on`` without peer credentials: the message says how to get them."""


def peer_tls(settings: Settings) -> PeerTls | None:
    """This node's peer credentials, when it is a member of a fog: with
    ``fog`` unset, when it has them (a node bundle installed); never with
    ``fog=off``. Reads files: call it off the event loop."""
    if settings.fog is False:
        return None
    paths = CertPaths(settings.certs_dir)
    credentials = load_node_credentials(paths)
    if credentials is None:
        if settings.fog:
            raise FogUnavailable(
                f"fog=on, but there is no node certificate in {settings.certs_dir} "
                "(node.crt, node.key): on the machine that holds the fog's CA run "
                "`fognode certs issue --node NAME` and install the bundle here (docs/fog.md)"
            )
        return None
    return PeerTls(credentials, PeerFiles(paths.node_cert, paths.node_key, paths.ca_cert))


def fog_options(settings: Settings) -> FogOptions:
    return FogOptions(
        own_id=node_id(settings),
        margin=settings.fog_margin_seconds,
        stale_after=settings.fog_stale_seconds,
    )


def membership_options(settings: Settings, *, port: int) -> MembershipOptions:
    refresh = settings.fog_refresh_seconds
    return MembershipOptions(
        own_id=node_id(settings),
        port=port,
        peers=tuple(settings.fog_peers),
        table=TableOptions(refresh=refresh, stale_after=settings.fog_stale_seconds),
        ask_timeout=min(1.0, max(0.5, refresh)),
        mdns=settings.mdns,
        interfaces=list(settings.mdns_interfaces) or None,
    )
