"""The node's membership of the fog: find the other nodes, ask them, keep the table.

One service per node (in the one process, or in the supervisor of worker
processes, which tells every worker what it found): it

* offers the member table (fog/members.py) the peers of the static list
  (``FOGNODE_PEERS``) and every node mDNS finds that announces a peer port
  (TXT ``fog``), in both DNS-SD domains (discovery/browser.py's watch);
* asks each candidate for its state (``GET /fog/state`` on its peer port)
  when the table says so, every second or two, over kept-alive mutual TLS
  connections with this node's node certificate; the certificate the
  candidate presents is checked before anything is sent (its marker, on
  top of the chain OpenSSL checks), so a node with another CA, or with only
  a server certificate of this one, is refused and never asked anything
  else, however exactly it copies a member's TXT record;
* publishes the members and candidates after every change (coalesced):
  to this process's view (upstreams/peers.py) or, from the supervisor, to
  every worker.

mDNS is only where to ask: a node that stops announcing (its drain's
goodbye) is dropped from the candidates, one that never announced but
answers from the static list is a member all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable

from multidict import CIMultiDict

from ...certs.peers import PeerIdentity, PeerRefused
from ...discovery.browser import Change, FogNode, watch
from ...discovery.names import DEFAULT_TYPES
from ...fog.members import (
    CandidateView,
    Member,
    MembershipOptions,
    MemberTable,
    Source,
    split_address,
)
from ...fog.state import PeerState
from ..pipeline.peers import STATE_PATH
from ..transport.peer_tls import PeerTls
from ..upstreams.hop import ConnectFailed, HopError, HopOptions, HopPool

log = logging.getLogger("fognode.fog")

# Coalesce the findings of several answers into one publication.
PUBLISH_DELAY = 0.1


Publish = Callable[[list[Member], list[CandidateView]], None]


class FogMembership:
    def __init__(self, options: MembershipOptions, tls: PeerTls, publish: Publish) -> None:
        self.options = options
        self.tls = tls
        self.publish = publish
        self.table = MemberTable(options.table, own_id=options.own_id, clock=time.monotonic)
        self._asking: dict[str, asyncio.Task[None]] = {}
        self._hops: dict[str, HopPool] = {}
        self._refusals: dict[str, str] = {}
        self._identities: dict[str, PeerIdentity] = {}
        self._watch: asyncio.Task[None] | None = None
        self._publishing: asyncio.TimerHandle | None = None
        self._found: dict[tuple[object, ...], set[str]] = {}  # mDNS node -> its addresses
        self._told_refused: set[str] = set()

    async def start(self) -> None:
        for peer in self.options.peers:
            try:
                host, port = split_address(peer, self.options.port)
            except ValueError:
                log.warning("fog: %r in FOGNODE_PEERS is not host[:port]; left out", peer)
                continue
            self._ask_from(self.table.offer(host, port, Source.STATIC))
        if self.options.mdns:
            self._watch = asyncio.create_task(self._browse(), name="fognode-fog-browse")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        for task in self._asking.values():
            task.cancel()
        await asyncio.gather(*self._asking.values(), return_exceptions=True)
        self._asking.clear()
        if self._publishing is not None:
            self._publishing.cancel()
        for hop in self._hops.values():
            await hop.close()
        self._hops.clear()

    def report_failure(self, address: str, reason: str) -> None:
        """A request to the member failed before its first byte (a worker's, or
        this process's): counted as a failed state request, and asked again soon."""
        self.table.failed(address, reason)
        self._soon()

    # --- candidates from mDNS -------------------------------------------------------
    async def _browse(self) -> None:
        try:
            async for event in watch(
                service_types=DEFAULT_TYPES,
                instance_prefix=None,
                interfaces=self.options.interfaces,
            ):
                if event.change is Change.REMOVED:
                    self._gone(event.node)
                else:
                    self._seen(event.node)
        except asyncio.CancelledError:
            raise
        except Exception:  # mDNS is a convenience: the static list still works
            log.exception("fog: browsing for members stopped")

    def _seen(self, node: FogNode) -> None:
        """Every address a node announces is a place to ask, until the node is
        gone: an announcement with a copied id adds its host to the places,
        and never takes the node's own away (its certificate decides)."""
        port = node.txt.fog_port
        if not port:
            return
        found = self._found.setdefault(node.identity, set())
        for host in _askable(node.addresses):
            address = self.table.offer(host, port, Source.MDNS)
            found.add(address)
            self._ask_from(address)
        self._soon()

    def _gone(self, node: FogNode) -> None:
        for address in self._found.pop(node.identity, set()):
            self.table.withdraw(address, Source.MDNS)
        self._soon()

    # --- asking ---------------------------------------------------------------------
    def _ask_from(self, address: str) -> None:
        task = self._asking.get(address)
        if task is None or task.done():
            self._asking[address] = asyncio.create_task(
                self._keep_asking(address), name=f"fognode-fog-ask-{address}"
            )

    async def _keep_asking(self, address: str) -> None:
        try:
            while (delay := self.table.delay(address)) is not None:
                await asyncio.sleep(delay)
                if self.table.where(address) is None:
                    break
                await self._ask(address)
                self._soon()
        finally:
            self._asking.pop(address, None)
            hop = self._hops.pop(address, None)
            if hop is not None:
                await hop.close()

    def _hop(self, address: str) -> HopPool:
        hop = self._hops.get(address)
        if hop is None:

            def check(der: bytes | None) -> None:
                try:
                    self._identities[address] = self.tls.check(der)
                except PeerRefused as exc:
                    self._refusals[address] = str(exc)
                    raise

            hop = self._hops[address] = HopPool(
                f"https://{address}",
                HopOptions(
                    max_connections=1,
                    connect_timeout=self.options.ask_timeout,
                    ssl=self.tls.client,
                    check_peer=check,
                ),
            )
        return hop

    async def _ask(self, address: str) -> None:
        hop = self._hop(address)
        self._refusals.pop(address, None)
        try:
            async with asyncio.timeout(self.options.ask_timeout):
                answer = await hop.request(
                    "GET",
                    STATE_PATH,
                    CIMultiDict({"Accept": "application/json"}),
                    None,
                    head_timeout=self.options.ask_timeout,
                )
                try:
                    if answer.status != 200:
                        raise HopError(f"it answered {answer.status}")
                    body = await answer.read(64 * 1024)
                except BaseException:
                    answer.close()
                    raise
                answer.release()
            state = PeerState.from_json(body)
        except ConnectFailed as exc:
            refusal = self._refusals.get(address) or (
                exc.reason if exc.refused_certificate else None
            )
            if refusal is not None:
                if address not in self._told_refused:  # once, not every retry
                    self._told_refused.add(address)
                    log.warning("fog: %s is not a member of this fog: %s", address, refusal)
                self.table.refused(address, refusal)
            else:
                self.table.failed(address, f"cannot connect ({exc.reason})")
            return
        except TimeoutError:
            self.table.failed(address, f"no answer within {self.options.ask_timeout:g}s")
            return
        except (HopError, ValueError) as exc:
            self.table.failed(address, f"unexpected answer ({type(exc).__name__}: {exc})")
            return
        identity = self._identities.get(address)
        self.table.answered(address, state, identity.name if identity is not None else "")

    # --- telling --------------------------------------------------------------------
    def _soon(self) -> None:
        if self._publishing is None:
            loop = asyncio.get_running_loop()
            self._publishing = loop.call_later(PUBLISH_DELAY, self._publish)

    def _publish(self) -> None:
        self._publishing = None
        self.publish(self.table.members(), self.table.views())


def _askable(addresses: tuple[str, ...]) -> list[str]:
    """IPv4 addresses, and IPv6 ones that need no interface to reach (a
    link-local address alone names no route)."""
    usable = []
    for text in addresses:
        try:
            ip = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if ip.version == 4 or not ip.is_link_local:
            usable.append(str(ip))
    return usable
