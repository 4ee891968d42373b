"""`fognode serve --workers 2`: several processes on one port, one node (issue 14, Every core).

Real `fognode serve` processes against the Ollama stand-in, which counts
the requests in flight at the upstream: a cap counted per process would
show there as more requests at once than the cap allows. The requests go
over real TLS, each on a connection of its own, so the kernel spreads them
over both workers (SO_REUSEPORT); the node's log says which worker served
each one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from fognode.auth.api_keys import entry_for, new_key
from fognode.certs.issuer import SubjectNames
from fognode.certs.lifecycle import issue_to_files, signing_authority
from fognode.certs.store import CertPaths
from tests.support.helpers import STREAMED_CHAT, free_port, wait_until
from tests.support.ollama_standin import OllamaStandIn
from tests.support.pki import NODE_NAMES, make_pki
from tests.support.processes import NodeProcess

USERS = {name: new_key() for name in ("alice", "bob", "carol", "dave")}
GLOBAL_CAP = 3
PER_USER_CAP = 2
GUARD = 60.0  # turns a hang into a failure; nothing asserts on time


def chat_as(tag: str) -> dict[str, Any]:
    """A streamed chat whose last message is ``tag``: the stand-in counts by it."""
    return {**STREAMED_CHAT, "messages": [{"role": "user", "content": tag}]}


def api_keys_with(admin: str, *, users: bool = True) -> str:
    """FOGNODE_API_KEYS: an operator's admin key, and the users' keys."""
    entries = [entry_for(key, name, admin=False) for name, key in USERS.items()] if users else []
    return json.dumps([*entries, entry_for(admin, "op", admin=True)])


def node_settings(standin: OllamaStandIn, pki_dir: Path, **more: str) -> dict[str, str]:
    return {
        "workers": "2",
        "certs_dir": str(pki_dir),
        "upstream_url": standin.url,
        "api_keys": json.dumps([entry_for(key, name, admin=False) for name, key in USERS.items()]),
        "metrics_public": "true",
        "max_concurrent_requests": str(GLOBAL_CAP),
        "per_user_concurrent_requests": str(PER_USER_CAP),
        # Long: a refusal is a status, never an in-band error after early headers.
        "stream_heartbeat_after": "60",
        **more,
    }


@pytest.fixture
async def node_certs(tmp_path: Path) -> AsyncIterator[tuple[Path, ssl.SSLContext]]:
    pki = make_pki(tmp_path / "certs")
    yield pki.paths.directory, ssl.create_default_context(cafile=str(pki.ca))


async def metrics(node: NodeProcess, tls: ssl.SSLContext) -> dict[tuple[str, str], float]:
    """The node's /metrics as {(sample name, sorted labels as text): value}."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"https://localhost:{node.port}/metrics", ssl=tls) as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    return {
        (s.name, ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def chat_counts(seen: dict[tuple[str, str], float]) -> dict[str, float]:
    """fognode_requests_total of the chat route, by its labels."""
    return {
        labels: value
        for (name, labels), value in seen.items()
        if name == "fognode_requests_total" and "route=/v1/chat/completions" in labels
    }


async def metrics_until(
    node: NodeProcess, tls: ssl.SSLContext, check: Callable[[dict[tuple[str, str], float]], bool]
) -> None:
    """Scrape until ``check`` holds (the limit only turns a hang into a failure)."""
    async with asyncio.timeout(GUARD):
        while not check(await metrics(node, tls)):  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def worker_pids(parent: int) -> list[int]:
    text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
    return [int(pid) for pid in text.split()]


def running(pid: int) -> bool:
    """Alive (an exited process nobody reaped yet is a zombie, state Z)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def none_running(pids: list[int]) -> bool:
    return not any(map(running, pids))


def connection_owner(pids: list[int], server_port: int, client_port: int) -> int:
    """Which of ``pids`` holds the server side of the loopback connection
    from ``client_port`` (read from /proc: the socket's inode, then its fd)."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        ports = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
        if ports == (server_port, client_port) and inode in inodes:
            return inodes[inode]
    raise AssertionError(f"no worker holds the connection from port {client_port}")


def served_by(log: str) -> Counter[str]:
    """Chat requests in the access log, by the worker that served them."""
    return Counter(
        m.group(1) for m in re.finditer(r" (w\d+) fognode\.access .*POST /v1/chat/completions", log)
    )


async def test_caps_are_the_nodes_across_workers(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """16 requests at once from 4 users over 2 workers; the node allows 3 at once,
    2 per user: the upstream never sees more, the rest are refused as one
    process refuses them (429 for the user's cap, 503 for the node's), and
    /metrics counts every request of both workers."""
    standin.token_delay = 0.2  # about 2.4 s per answer: every request arrives while others run
    pki_dir, tls = node_certs
    node = NodeProcess(
        tmp_path,
        node_settings(standin, pki_dir, max_queued_requests="2", per_user_queued_requests="1"),
    )
    await node.start(tls)
    try:

        async def one(user: str, tag: str = "") -> tuple[int, dict[str, str], bytes]:
            connector = aiohttp.TCPConnector(ssl=tls, force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as http,
                http.post(
                    f"https://localhost:{node.port}/v1/chat/completions",
                    json=chat_as(tag or user),
                    headers={"Authorization": f"Bearer {USERS[user]}"},
                ) as resp,
            ):
                return resp.status, dict(resp.headers), await resp.read()

        async with asyncio.timeout(GUARD):
            answers = await asyncio.gather(*(one(u) for u in USERS for _ in range(4)))
        statuses = Counter(status for status, _, _ in answers)
        assert set(statuses) <= {200, 429, 503}, answers
        assert statuses[429] >= 1 and statuses[503] >= 1 and statuses[200] >= GLOBAL_CAP
        for status, headers, body in answers:
            if status == 200:
                assert body.endswith(b"data: [DONE]\n\n")
            else:  # admission's own answers, with its Retry-After
                code = {429: "user_concurrency_limit", 503: "node_busy"}[status]
                assert json.loads(body)["error"]["code"] == code, body
                assert int(headers["Retry-After"]) >= 1

        # What the upstream saw: never more than the caps, and the node's cap reached.
        assert standin.peak_in_flight[""] == GLOBAL_CAP
        for user in USERS:
            assert standin.peak_in_flight[user] <= PER_USER_CAP
        assert len(standin.forwarded) == statuses[200]

        # One user alone, 6 at once: 2 run, 1 waits, 3 are refused with 429.
        async with asyncio.timeout(GUARD):
            alone = await asyncio.gather(*(one("alice", "alice alone") for _ in range(6)))
        assert Counter(status for status, _, _ in alone) == {200: 3, 429: 3}, alone
        assert standin.peak_in_flight["alice alone"] == PER_USER_CAP
        statuses += Counter(status for status, _, _ in alone)
        answers += alone

        # Both workers served, and /metrics counts the requests of both. (A
        # worker counts and logs a request just after its last byte left:
        # wait for the counts to be complete, then compare them exactly.)
        await wait_until(
            lambda: sum(served_by(node.log()).values()) == len(answers), "every access line"
        )
        by_worker = served_by(node.log())
        assert set(by_worker) == {"w1", "w2"}, by_worker
        await metrics_until(node, tls, lambda m: sum(chat_counts(m).values()) >= len(answers))
        seen = await metrics(node, tls)
        chats = chat_counts(seen)
        assert sum(chats.values()) == len(answers)
        for status, count in statuses.items():
            assert chats[f"method=POST,route=/v1/chat/completions,status={status}"] == count
        refused = "fognode_admission_rejections_total"
        assert seen[(refused, "reason=user_concurrency_limit")] == statuses[429]
        assert seen[(refused, "reason=node_busy")] == statuses[503]
        assert seen[("fognode_admission_active", "")] == 0
        assert seen[("fognode_admission_capacity", "")] == GLOBAL_CAP
    finally:
        await node.astop()


async def test_quotas_are_the_nodes_across_workers(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """12 requests of one user at once over 2 workers, 3 a minute allowed: the
    node admits exactly 3 (one worker's reservations count in the other's
    check), refuses 9 with rate_limit_exceeded, and writes 12 records once,
    all with the node's one id."""
    standin.token_delay = 0.05
    pki_dir, tls = node_certs
    store = tmp_path / "usage.sqlite3"
    admin = new_key()
    node = NodeProcess(
        tmp_path,
        node_settings(
            standin,
            pki_dir,
            api_keys=api_keys_with(admin),
            quota_requests_per_minute="3",
            max_concurrent_requests="20",
            per_user_concurrent_requests="20",
            usage_sqlite_path=str(store),
        ),
    )
    await node.start(tls)
    try:

        async def one() -> tuple[int, bytes]:
            connector = aiohttp.TCPConnector(ssl=tls, force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as http,
                http.post(
                    f"https://localhost:{node.port}/v1/chat/completions",
                    json=chat_as("alice"),
                    headers={"Authorization": f"Bearer {USERS['alice']}"},
                ) as resp,
            ):
                return resp.status, await resp.read()

        async with asyncio.timeout(GUARD):
            answers = await asyncio.gather(*(one() for _ in range(12)))
        statuses = Counter(status for status, _ in answers)
        assert statuses == {200: 3, 429: 9}, answers
        for status, body in answers:
            if status == 429:
                assert json.loads(body)["error"]["code"] == "rate_limit_exceeded", body
        assert len(standin.forwarded) == 3
        await wait_until(lambda: sum(served_by(node.log()).values()) == 12, "every access line")
        assert set(served_by(node.log())) == {"w1", "w2"}  # both workers checked quotas
        seen = await metrics(node, tls)
        assert seen[("fognode_quota_rejections_total", "code=rate_limit_exceeded")] == 9

        # Any worker's /admin/usage reads the store the supervisor writes, and
        # asks it for the records not yet written.
        async def report() -> dict[str, Any]:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"https://localhost:{node.port}/admin/usage",
                    params={"user": "apikey:alice"},
                    headers={"Authorization": f"Bearer {admin}"},
                    ssl=tls,
                ) as resp,
            ):
                assert resp.status == 200
                answer: dict[str, Any] = await resp.json()
                return answer

        async with asyncio.timeout(GUARD):
            while (usage := await report())["pending_records"]:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        [alice] = usage["users"]
        assert (alice["requests"], alice["rejected"]) == (3, 9)
    finally:
        await node.astop()
    # The supervisor wrote every record before it exited, once.
    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT outcome, node FROM usage_records WHERE uid = 'apikey:alice'")
        records = list(rows)
    assert Counter(outcome for outcome, _ in records) == {"completed": 3, "rejected": 9}
    assert len({node_id for _, node_id in records}) == 1


async def test_a_sign_out_holds_on_every_worker(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """Sign in to the status page, sign out: the kept cookie opens the page on
    no worker any more (each worker keeps the sign-outs it was told of)."""
    pki_dir, tls = node_certs
    admin = new_key()
    node = NodeProcess(
        tmp_path,
        node_settings(standin, pki_dir, api_keys=api_keys_with(admin)),
    )
    await node.start(tls)
    url = f"https://localhost:{node.port}"
    try:
        # Every request on a new connection: the kernel spreads them over both workers.
        connector = aiohttp.TCPConnector(ssl=tls, force_close=True)
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(connector=connector, cookie_jar=jar) as http:

            async def page_statuses() -> Counter[int]:
                statuses: Counter[int] = Counter()
                for _ in range(10):
                    async with http.get(f"{url}/", allow_redirects=False) as resp:
                        statuses[resp.status] += 1
                return statuses

            async with http.get(f"{url}/signin") as resp:
                form = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
            assert form is not None
            async with http.post(
                f"{url}/signin",
                data={"csrf": form.group(1), "credential": admin},
                allow_redirects=False,
            ) as resp:
                assert resp.status == 303 and resp.headers["Location"] == "/"
            kept = {c.key: c.value for c in jar}  # what a stolen or kept cookie would be
            assert await page_statuses() == {200: 10}
            async with http.get(f"{url}/", allow_redirects=False) as resp:
                token = re.search(r'name="csrf-token" content="([^"]+)"', await resp.text())
            assert token is not None
            async with http.post(
                f"{url}/signout", data={"csrf": token.group(1)}, allow_redirects=False
            ) as resp:
                assert resp.status == 303
            jar.update_cookies(kept)
            assert await page_statuses() == {303: 10}
        pages = Counter(re.findall(r' (w\d+) fognode\.access .*"GET /" ', node.log()))
        assert set(pages) == {"w1", "w2"}, pages  # both workers answered the page
    finally:
        await node.astop()


async def test_the_onboarding_page_is_served_once_by_the_main_process(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """Its own port, bound once (no worker competes for it): the main process
    serves it, and every worker's status page links to it."""
    pki_dir, tls = node_certs
    page_port = free_port()
    admin = new_key()
    node = NodeProcess(
        tmp_path,
        node_settings(
            standin,
            pki_dir,
            onboarding="true",
            onboarding_port=str(page_port),
            api_keys=api_keys_with(admin, users=False),
        ),
    )
    await node.start(tls)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", page_port)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            # Answered, and the connection kept open: whoever holds it served it.
            assert node.alive
            client_port = writer.get_extra_info("sockname")[1]
            assert connection_owner([node.pid], page_port, client_port) == node.pid
        finally:
            writer.close()
        connector = aiohttp.TCPConnector(ssl=tls, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as https:
            for _ in range(6):  # both workers, most likely: each knows the page's URL
                async with https.get(
                    f"https://localhost:{node.port}/status/live",
                    headers={"Authorization": f"Bearer {admin}"},
                ) as resp:
                    assert resp.status == 200
                    assert f":{page_port}" in await resp.text()
    finally:
        await node.astop()


async def test_a_killed_worker_gives_its_slots_back(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """Fill every slot with streams that never end, SIGKILL a worker that holds
    some: its slots come back (new requests are admitted up to the cap, not
    beyond), and the worker is started again."""
    standin.stall_after = 1  # one event, then the stream stays open
    pki_dir, tls = node_certs
    node = NodeProcess(
        tmp_path, node_settings(standin, pki_dir, per_user_concurrent_requests=str(GLOBAL_CAP))
    )
    await node.start(tls)
    sessions: list[aiohttp.ClientSession] = []

    async def open_stream() -> tuple[aiohttp.ClientResponse, int]:
        """A stream admitted and running (its first event read), and its client port."""
        http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls, force_close=True))
        sessions.append(http)
        resp = await http.post(
            f"https://localhost:{node.port}/v1/chat/completions",
            json=chat_as("alice"),
            headers={"Authorization": f"Bearer {USERS['alice']}"},
        )
        assert resp.status == 200
        assert (await resp.content.readline()).startswith(b"data: ")
        assert resp.connection is not None and resp.connection.transport is not None
        return resp, int(resp.connection.transport.get_extra_info("sockname")[1])

    try:
        assert node.alive
        async with asyncio.timeout(GUARD):
            pids = worker_pids(node.pid)
            assert len(pids) == 2
            streams: list[tuple[aiohttp.ClientResponse, int]] = []
            owners: Counter[int] = Counter()
            # Until the cap is full and a worker holds a slot (the kernel
            # chooses the worker; a full node makes room as streams end).
            while len(streams) < GLOBAL_CAP:
                resp, port = await open_stream()
                streams.append((resp, port))
                owners[connection_owner(pids, node.port, port)] += 1
            assert standin.in_flight[""] == GLOBAL_CAP
            victim, held = owners.most_common(1)[0]
            assert (await metrics(node, tls))[("fognode_admission_active", "")] == GLOBAL_CAP

            os.kill(victim, signal.SIGKILL)
            await wait_until(
                lambda: standin.in_flight[""] == GLOBAL_CAP - held,
                "the killed worker's upstream requests to end",
            )
            active = ("fognode_admission_active", "")
            await metrics_until(node, tls, lambda m: m[active] == GLOBAL_CAP - held)
            # Its slots are free again: as many new streams are admitted.
            for _ in range(held):
                await open_stream()
            assert standin.in_flight[""] == GLOBAL_CAP
            assert standin.peak_in_flight[""] == GLOBAL_CAP
            seen = await metrics(node, tls)
            assert seen[active] == GLOBAL_CAP

            # The supervisor noticed and started the worker again.
            number = "1" if victim == pids[0] else "2"
            restarts = ("fognode_worker_restarts_total", f"worker={number}")
            up = ("fognode_worker_up", f"worker={number}")
            await metrics_until(node, tls, lambda m: m.get(restarts) == 1 and m.get(up) == 1)
        assert f"(pid {victim}) was killed by SIGKILL" in node.log()
        assert node.alive
    finally:
        for http in sessions:
            await http.close()
        await node.astop()


async def test_sigterm_stops_every_worker_and_sigkill_takes_them_along(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    pki_dir, tls = node_certs
    for sig, code in ((signal.SIGTERM, 0), (signal.SIGKILL, -signal.SIGKILL)):
        node = NodeProcess(tmp_path, node_settings(standin, pki_dir))
        await node.start(tls)
        try:
            assert node.alive
            pids = worker_pids(node.pid)
            assert len(pids) == 2
            async with asyncio.timeout(GUARD):
                assert await node.astop(sig, GUARD) == code
            # SIGTERM: stopped in order; SIGKILL: they die with it (PR_SET_PDEATHSIG).
            await wait_until(partial(none_running, pids), "the workers to exit")
        finally:
            await node.astop()


async def served_certificate(port: int, tls: ssl.SSLContext) -> bytes:
    """The certificate a new TLS connection to ``port`` is served (DER)."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="localhost"
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert isinstance(der, bytes)
        return der
    finally:
        writer.close()


async def test_a_certificate_replaced_on_disk_reaches_every_worker(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """The main process alone watches the files; every worker then serves the new pair."""
    pki_dir, tls = node_certs
    node = NodeProcess(tmp_path, node_settings(standin, pki_dir, cert_check_interval="0.2"))
    await node.start(tls)
    try:
        old = await served_certificate(node.port, tls)
        # What `fognode certs renew` (another process) writes.
        paths = CertPaths(pki_dir)
        signer = signing_authority(
            CertPaths(pki_dir.with_name(pki_dir.name + "-issuer")), paths, None
        )
        await asyncio.to_thread(issue_to_files, paths, signer, SubjectNames.parse(NODE_NAMES))
        new = x509.load_pem_x509_certificate(paths.server_cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        assert new != old

        async def reloaded() -> bool:
            # Many new connections: the kernel spreads them over both workers.
            served = await asyncio.gather(*(served_certificate(node.port, tls) for _ in range(16)))
            return set(served) == {new}

        async with asyncio.timeout(GUARD):
            while not await reloaded():  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        log = node.log()
        assert log.count("reloaded the server certificate") == 1  # checked once, by main
        assert re.search(r" w1 .*loaded the new server certificate", log)
        assert re.search(r" w2 .*loaded the new server certificate", log)
    finally:
        await node.astop()


async def test_a_waiting_stream_hears_its_place_in_the_nodes_queue(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """The heartbeat's `: queued N` is the place in the main process's queue,
    whichever worker holds the waiting request."""
    standin.stall_after = 1  # the first stream holds the only slot
    pki_dir, tls = node_certs
    settings = node_settings(
        standin,
        pki_dir,
        max_concurrent_requests="1",
        stream_heartbeat_after="0.2",
        stream_heartbeat_interval="0.2",
    )
    node = NodeProcess(tmp_path, settings)
    await node.start(tls)
    try:
        connector = aiohttp.TCPConnector(ssl=tls, force_close=True, limit=0)
        async with aiohttp.ClientSession(connector=connector) as http, asyncio.timeout(GUARD):

            async def post(user: str) -> aiohttp.ClientResponse:
                return await http.post(
                    f"https://localhost:{node.port}/v1/chat/completions",
                    json=chat_as(user),
                    headers={"Authorization": f"Bearer {USERS[user]}"},
                )

            first = await post("alice")
            assert (await first.content.readline()).startswith(b"data: ")
            second = await post("bob")
            assert second.status == 200  # early headers: it waits
            while (line := await second.content.readline()) != b": queued 1\n":
                assert line in (b": keep-alive\n",), line
            first.close()  # the slot is free: bob's stream starts
            while not (line := await second.content.readline()).startswith(b"data: "):
                assert line.startswith(b": "), line
            second.close()
    finally:
        await node.astop()


# --- what the status page and routing keep: the node's, not a worker's ----------------


class OnWorker:
    """A client session whose connections all leave from one local port, so
    the kernel hands every one of them to the same worker (SO_REUSEPORT picks
    by the addresses and ports); after each request the test checks that
    worker holds the kept-alive connection."""

    def __init__(self, node: NodeProcess, tls: ssl.SSLContext) -> None:
        assert node.alive
        self.node, self.pids = node, worker_pids(node.pid)
        self.port = free_port()
        connector = aiohttp.TCPConnector(
            ssl=tls, limit=1, family=socket.AF_INET, local_addr=("127.0.0.1", self.port)
        )
        jar = aiohttp.CookieJar(unsafe=True)
        self.http = aiohttp.ClientSession(connector=connector, cookie_jar=jar)
        self.pid = 0

    def holder(self) -> int:
        return connection_owner(self.pids, self.node.port, self.port)

    async def send(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
        url = f"https://localhost:{self.node.port}{path}"
        async with self.http.request(method, url, **kwargs) as resp:
            answer = resp.status, dict(resp.headers), await resp.text()
        assert self.holder() == self.pid
        return answer


async def one_session_per_worker(
    node: NodeProcess, tls: ssl.SSLContext, sessions: list[aiohttp.ClientSession]
) -> list[OnWorker]:
    """Sessions from new local ports until each worker holds one (the kernel
    picks the worker; each port is a fresh draw)."""
    found: dict[int, OnWorker] = {}
    for _ in range(64):
        worker = OnWorker(node, tls)
        sessions.append(worker.http)
        async with worker.http.get(f"https://localhost:{node.port}/healthz") as resp:
            await resp.read()
        worker.pid = worker.holder()
        found.setdefault(worker.pid, worker)
        if len(found) == len(worker.pids):
            return list(found.values())
    raise AssertionError("64 local ports and the kernel never chose every worker")


def turn(n: int, topic: str) -> dict[str, Any]:
    """A chat at its turn ``n``: the earlier questions and answers, one new question."""
    messages = []
    for i in range(1, n + 1):
        messages.append({"role": "user", "content": f"Question {i} about {topic}?"})
        if i < n:
            messages.append({"role": "assistant", "content": f"Answer {i} about {topic}."})
    return {"model": "llama3.2:1b", "messages": messages}


async def test_a_conversation_keeps_its_upstream_whichever_worker_gets_its_next_turn(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """Two upstreams with the model loaded. A conversation's first turn goes
    through one worker, its next turns through the other and back: each goes
    where the previous one went, for affinity (the node's table, in the main
    process). The first turn is steered to the second upstream, where a
    worker that knew nothing of it would not send the next one (equals take
    turns, and the other worker has sent nothing yet)."""
    other = OllamaStandIn()
    await other.start()
    sessions: list[aiohttp.ClientSession] = []
    pki_dir, tls = node_certs
    for upstream in (standin, other):
        upstream.load("llama3.2:1b")
    node = NodeProcess(
        tmp_path, node_settings(standin, pki_dir, upstream_urls=f"{standin.url},{other.url}")
    )
    try:
        await node.start(tls)
        first, second = await one_session_per_worker(node, tls, sessions)
        bearer = {"Authorization": f"Bearer {USERS['alice']}"}

        async def ask(worker: OnWorker, body: dict[str, Any]) -> tuple[str, str]:
            status, headers, text = await worker.send(
                "POST", "/v1/chat/completions", json=body, headers=bearer
            )
            assert status == 200, text
            return headers["X-Fognode-Upstream"], headers["X-Fognode-Upstream-Reason"]

        assert await ask(first, turn(1, "rain")) == ("1", "loaded,least-busy")
        assert await ask(first, turn(1, "the sea")) == ("2", "loaded,least-busy")
        assert await ask(second, turn(2, "the sea")) == ("2", "loaded,affinity")
        assert await ask(first, turn(3, "the sea")) == ("2", "loaded,affinity")
        assert await ask(second, turn(2, "rain")) == ("1", "loaded,affinity")
        assert [len(s.forwarded) for s in (standin, other)] == [2, 3]
    finally:
        for http in sessions:
            await http.close()
        await node.astop()
        await other.stop()


def live_numbers(page: str) -> dict[str, int]:
    """The numbers the status page's live part shows, by their element id."""
    ids = ("requests-total", "errors-total", "active-streams", "in-flight", "connections")
    found = {i: re.search(rf'id="{i}">(\d+)<', page) for i in ids}
    numbers = {i: int(m.group(1)) for i, m in found.items() if m is not None}
    upstream = re.search(r"(\d+) in flight</span>", page)
    numbers["upstream-in-flight"] = int(upstream.group(1)) if upstream else 0
    return numbers


async def test_the_status_page_shows_the_whole_nodes_activity(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """Requests, errors and open streams on both workers: the page, whichever
    worker answers it, counts them all (the main process sums every worker's)."""
    pki_dir, tls = node_certs
    admin = new_key()
    node = NodeProcess(
        tmp_path,
        node_settings(standin, pki_dir, api_keys=api_keys_with(admin)),
    )
    sessions: list[aiohttp.ClientSession] = []
    try:
        await node.start(tls)
        workers = await one_session_per_worker(node, tls, sessions)
        pages = await one_session_per_worker(node, tls, sessions)

        async def live(page: OnWorker) -> dict[str, int]:
            status, _, text = await page.send(
                "GET", "/status/live", headers={"Authorization": f"Bearer {admin}"}
            )
            assert status == 200
            return live_numbers(text)

        before = await live(pages[0])
        alice = {"Authorization": f"Bearer {USERS['alice']}"}
        for worker in workers:  # 3 answered and 1 refused on each worker
            for n in range(3):
                status, _, _ = await worker.send(
                    "POST", "/v1/chat/completions", json=chat_as(f"n{n}"), headers=alice
                )
                assert status == 200
            status, _, _ = await worker.send(
                "POST",
                "/v1/chat/completions",
                json=chat_as("x"),
                headers={"Authorization": "Bearer x"},
            )
            assert status == 401

        # A worker counts a request just after its last byte left: wait for all 8.
        async with asyncio.timeout(GUARD):
            while (await live(pages[0]))["requests-total"] < before["requests-total"] + 8:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        for page in pages:
            now = await live(page)
            assert now["requests-total"] == before["requests-total"] + 8
            assert now["errors-total"] == before["errors-total"] + 2

        # One stream held open on each worker: both are live on either worker's page.
        standin.stall_after = 1
        streams = []
        for worker in workers:
            resp = await worker.http.post(
                f"https://localhost:{node.port}/v1/chat/completions",
                json=chat_as("open"),
                headers=alice,
            )
            assert resp.status == 200
            assert (await resp.content.readline()).startswith(b"data: ")
            streams.append(resp)
        for page in pages:
            now = await live(page)
            assert (now["active-streams"], now["in-flight"], now["upstream-in-flight"]) == (2, 2, 2)
            # The two streams' and the two pages' connections at least, on two workers.
            assert now["connections"] >= 4
        for resp in streams:
            resp.close()
    finally:
        for http in sessions:
            await http.close()
        await node.astop()


async def test_more_workers_give_a_guesser_no_more_sign_in_attempts(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """A failed sign-in through one worker slows down the next attempt through
    any worker: the throttle is the node's (in the main process), so even the
    right key is not looked at yet, whichever worker gets it."""
    pki_dir, tls = node_certs
    admin = new_key()
    node = NodeProcess(
        tmp_path,
        node_settings(standin, pki_dir, api_keys=api_keys_with(admin, users=False)),
    )
    sessions: list[aiohttp.ClientSession] = []
    try:
        await node.start(tls)
        first, second = await one_session_per_worker(node, tls, sessions)

        async def sign_in(worker: OnWorker, credential: str) -> tuple[int, dict[str, str]]:
            status, _, form = await worker.send("GET", "/signin")
            assert status == 200
            token = re.search(r'name="csrf" value="([^"]+)"', form)
            assert token is not None
            status, headers, _ = await worker.send(
                "POST",
                "/signin",
                data={"csrf": token.group(1), "credential": credential},
                allow_redirects=False,
            )
            return status, headers

        assert (await sign_in(first, new_key()))[0] == 401
        for worker in (second, first, second):
            status, headers = await sign_in(worker, admin)
            assert status == 429 and int(headers["Retry-After"]) >= 1
    finally:
        for http in sessions:
            await http.close()
        await node.astop()


def model_lists(standin: OllamaStandIn) -> int:
    """How often the node asked the stand-in for its model list (its checks)."""
    return sum(1 for r in standin.checks if r.path == "/api/tags")


async def test_the_node_checks_each_upstream_once_and_every_worker_follows(
    standin: OllamaStandIn, node_certs: tuple[Path, ssl.SSLContext], tmp_path: Path
) -> None:
    """Two workers, one check of the upstream at start (the main process's);
    a model pulled through one worker is on the other's status page at once,
    from the one check the pull asked for."""
    pki_dir, tls = node_certs
    admin = new_key()
    settings = node_settings(standin, pki_dir, api_keys=api_keys_with(admin, users=False))
    settings["upstream_check_interval"] = "3600"  # only the checks this test causes
    node = NodeProcess(tmp_path, settings)
    sessions: list[aiohttp.ClientSession] = []
    try:
        await node.start(tls)
        assert model_lists(standin) == 1
        first, second = await one_session_per_worker(node, tls, sessions)
        bearer = {"Authorization": f"Bearer {admin}"}
        status, _, _ = await first.send(
            "POST", "/api/pull", json={"model": "qwen3:0.6b", "stream": False}, headers=bearer
        )
        assert status == 200
        # The worker asks for the check just after the pull's answer has left.
        async with asyncio.timeout(GUARD):
            while True:
                status, _, page = await second.send("GET", "/status/live", headers=bearer)
                assert status == 200
                if 'data-name="qwen3:0.6b"' in page:
                    break
                await asyncio.sleep(0.05)
        assert model_lists(standin) == 2
    finally:
        for http in sessions:
            await http.close()
        await node.astop()
