"""What the bench measures: the upstream, and each proxy in front of it.

Every target is one process tree listening on loopback, started with a
configuration written into the run's directory. Plain and TLS are separate
processes (so the memory and CPU of one never show in the other). TLS uses a
certificate issued by fognode's own CA code for ``localhost`` and
``127.0.0.1``; the bench's Python clients verify it against that CA.

    direct    the compiled upstream itself (bench/upstream/fastup.c): the limit
    fognode   this project, no auth, log level WARNING; optionally N workers;
              for bench/usage.py also with usage accounting off, and with quotas
    fognode base  the same from another checkout (--baseline DIR): before/after
              in the same interleaved rounds
    nginx     one worker, upstream keep-alive, proxy_buffering off
    Caddy     Debian's caddy, flush_interval -1, upstream keep-alive
    LiteLLM   LiteLLM's proxy, one worker, no master key
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import fastup
from bench.fastup import MissingTool
from bench.loadgen import Endpoint, chat_body

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PASSPHRASE = b"benchmark passphrase only, not a secret"


@dataclass(frozen=True)
class Options:
    """How the processes are set up for a run."""

    workdir: Path
    upstream_port: int
    stream_events: int  # events of a fast stream
    paced_events: int
    paced_us: int
    max_streams: int  # streams the memory figure opens: no pool may cap below it
    fognode_workers: int | None = None
    baseline: Path | None = None  # another checkout of fognode, measured as "fognode base"


@dataclass
class Target:
    name: str
    family: str  # direct, fognode, nginx, caddy, litellm: plain and TLS share it
    tls: bool
    port: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/v1/models"
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        assert self.log is not None
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,  # its children are stopped with it
            )

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def pids(self) -> list[int]:
        """The process and all its descendants (workers, children)."""
        assert self.proc is not None
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            try:
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(k) for k in (task / "children").read_text().split()]
            except FileNotFoundError:
                pass
        return found

    def endpoint(self, ca: ssl.SSLContext | None) -> Endpoint:
        return Endpoint("127.0.0.1", self.port, ca if self.tls else None)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def wait_ready(self, ca: ssl.SSLContext, limit: float) -> None:
        """Until the target answers a model listing with 200 (TLS: verified)."""
        deadline = time.monotonic() + limit
        url = f"{'https' if self.tls else 'http'}://localhost:{self.port}{self.ready_path}"
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2, context=ca) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError) as exc:
                last = str(exc)
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} did not answer {url} in {limit:g}s ({last}); see {self.log}"
        )


def baseline_package(checkout: Path, work: Path) -> Path:
    """A directory where ``import fognode`` finds ``checkout``'s code (its parts
    linked as fognode's subpackages, as setuptools maps them); on PYTHONPATH it
    comes before the editable install of this checkout."""
    root = work / "baseline"
    package = root / "fognode"
    package.mkdir(parents=True, exist_ok=True)
    for part in checkout.iterdir():
        if (part / "__init__.py").is_file() and part.name not in ("tests", "bench"):
            link = package / part.name
            if not link.is_symlink():
                link.symlink_to(part.resolve())
    return root


def cpu_seconds(pids: list[int]) -> float:
    """User + system time of these processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def upstream_stats(port: int, tag: str = "") -> dict[str, int]:
    """The upstream's counters (``open_tagged``: slow streams held under ``tag``)."""
    url = f"http://127.0.0.1:{port}/bench/stats" + (f"?tag={tag}" if tag else "")
    with urllib.request.urlopen(url, timeout=5) as resp:
        stats: dict[str, int] = json.load(resp)
    return stats


def need(tool: str, hint: str = "run bash bench/setup.sh") -> str:
    path = shutil.which(tool)
    if path is None:
        raise MissingTool(f"{tool} is not installed: {hint}")
    return path


def make_certs(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A test CA and a server certificate for localhost/127.0.0.1, made by
    fognode's own certificate code (the files fognode serves with)."""
    from fognode.certs.issuer import SubjectNames
    from fognode.certs.lifecycle import init_ca, issue_to_files
    from fognode.certs.store import CertPaths

    paths = CertPaths(directory)
    if not paths.server_cert.is_file():
        init_ca(paths, PASSPHRASE, common_name="fognode bench CA")
        issue_to_files(paths, PASSPHRASE, SubjectNames.parse(["localhost", "127.0.0.1"]))
    ca = ssl.create_default_context(cafile=str(paths.ca_cert))
    return directory, ca


NGINX = """\
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {work}/nginx-{name}.pid;
error_log {work}/nginx-{name}.error.log warn;
events {{ worker_connections {conns}; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-tmp;
  proxy_temp_path {work}/nginx-tmp;
  upstream up {{ server 127.0.0.1:{up}; keepalive 1024; }}
  server {{
    listen 127.0.0.1:{port}{ssl};
    {tls}
    location / {{
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
"""

CADDY = """\
{{
  admin off
  auto_https off
  log {{
    level ERROR
  }}
}}
{scheme}://:{port} {{
  bind 127.0.0.1
  {tls}
  reverse_proxy 127.0.0.1:{up} {{
    flush_interval -1
    transport http {{
      keepalive 120s
      keepalive_idle_conns 1024
      keepalive_idle_conns_per_host 1024
    }}
  }}
}}
"""

LITELLM = """\
model_list:
{models}
litellm_settings:
  drop_params: true
  telemetry: false
  request_timeout: 600
"""


# fognode's usage variants (bench/usage.py): the family's name and what it sets.
# "fognode" itself runs with the defaults, usage accounting on, no quota.
FOGNODE_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "fognode-usage-off": ("fognode usage off", {"FOGNODE_USAGE_ACCOUNTING": "false"}),
    # Limits no run reaches: every request is checked against the store, none refused.
    "fognode-quota": (
        "fognode quota",
        {
            "FOGNODE_QUOTA_TOKENS_PER_DAY": str(10**15),
            "FOGNODE_QUOTA_REQUESTS_PER_MINUTE": str(10**9),
        },
    ),
}


def build_targets(
    opts: Options, families: list[str], *, tls: bool, ports: list[int]
) -> tuple[Target, list[Target]]:
    """The upstream and the targets of ``families`` (plain, then TLS if asked)."""
    work = opts.workdir
    certs, _ = make_certs(work / "certs")
    cert, key = certs / "server.crt", certs / "server.key"
    up = opts.upstream_port
    nofile = max(4096, opts.max_streams * 4 + 1024)
    (work / "nginx-tmp").mkdir(exist_ok=True)
    port_iter = iter(ports)
    upstream = Target(
        "direct",
        "direct",
        False,
        up,
        fastup.command(
            up,
            events=opts.stream_events,
            paced_events=opts.paced_events,
            paced_us=opts.paced_us,
        ),
        log=work / "upstream.log",
    )
    targets: list[Target] = []

    def add(family: str, secure: bool) -> None:
        port = next(port_iter)
        suffix = " TLS" if secure else ""
        tag = f"{family}{'-tls' if secure else ''}"
        if family == "direct":
            if not secure:
                targets.append(upstream)
            return
        if family in ("fognode", "fognode-workers", "fognode-base", *FOGNODE_VARIANTS):
            workers = opts.fognode_workers if family == "fognode-workers" else None
            argv = [
                sys.executable,
                "-m",
                "fognode.gateway.cli",
                "serve",
                "--port",
                str(port),
                "--upstream-url",
                f"http://127.0.0.1:{up}",
                "--auth",
                "none",
                "--log-level",
                "WARNING",
                "--tls" if secure else "--no-tls",
            ]
            if workers:  # otherwise one process, the default
                argv += ["--workers", str(workers)]
            # Admission and the upstream pool sized above the streams the
            # memory figure opens: a cap there would hide streams, not
            # measure them (the bench checks how many are really open).
            room = str(opts.max_streams + 256)
            env = {
                "FOGNODE_MDNS": "false",
                "FOGNODE_MAX_CONCURRENT_REQUESTS": room,
                "FOGNODE_MAX_QUEUED_REQUESTS": room,
                "FOGNODE_PER_USER_CONCURRENT_REQUESTS": room,
                "FOGNODE_PER_USER_QUEUED_REQUESTS": room,
                "FOGNODE_UPSTREAM_MAX_CONNECTIONS": room,
                # Every client of the bench is 127.0.0.1: the per-address cap
                # (64 by default) would refuse wrk's c=256 and the held streams.
                "FOGNODE_MAX_CONNECTIONS_PER_CLIENT": "0",
                "FOGNODE_CERTS_DIR": str(certs),
                "FOGNODE_API_KEYS_FILE": "",
                # The run's own usage records, never the data dir of whoever runs it.
                "FOGNODE_USAGE_SQLITE_PATH": str(work / f"{tag}-usage.sqlite3"),
            }
            name = "fognode" if workers is None else f"fognode x{workers}"
            if family == "fognode-base":
                assert opts.baseline is not None
                name = "fognode base"
                env["PYTHONPATH"] = str(baseline_package(opts.baseline, work))
            if family in FOGNODE_VARIANTS:
                name, variant = FOGNODE_VARIANTS[family]
                env.update(variant)
            targets.append(
                Target(name + suffix, family, secure, port, argv, env, log=work / f"{tag}.log")
            )
        elif family == "nginx":
            conf = work / f"{tag}.conf"
            conf.write_text(
                NGINX.format(
                    work=work,
                    name=tag,
                    nofile=nofile,
                    conns=nofile,
                    up=up,
                    port=port,
                    ssl=" ssl" if secure else "",
                    tls=f"ssl_certificate {cert}; ssl_certificate_key {key};" if secure else "",
                )
            )
            argv = [need("nginx"), "-c", str(conf), "-p", str(work), "-g", "daemon off;"]
            targets.append(
                Target("nginx" + suffix, family, secure, port, argv, log=work / f"{tag}.log")
            )
        elif family == "caddy":
            conf = work / f"{tag}.Caddyfile"
            conf.write_text(
                CADDY.format(
                    scheme="https" if secure else "http",
                    port=port,
                    up=up,
                    tls=f"tls {cert} {key}" if secure else "",
                )
            )
            argv = [need("caddy"), "run", "--adapter", "caddyfile", "--config", str(conf)]
            env = {"HOME": str(work), "XDG_DATA_HOME": str(work / "caddy-data")}
            targets.append(
                Target("Caddy" + suffix, family, secure, port, argv, env, log=work / f"{tag}.log")
            )
        elif family == "litellm":
            exe = fastup.cache_dir() / "litellm-venv" / "bin" / "litellm"
            if not exe.is_file():
                raise MissingTool(f"LiteLLM is not installed ({exe}): run bash bench/setup.sh")
            conf = work / "litellm.yaml"
            models = "".join(
                f"  - model_name: {m}\n    litellm_params:\n      model: openai/{m}\n"
                f"      api_base: http://127.0.0.1:{up}/v1\n      api_key: none\n"
                for m in ("llama3.2:1b", "paced", "slow")
            )
            conf.write_text(LITELLM.format(models=models))
            argv = [
                str(exe),
                "--config",
                str(conf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ]
            if secure:
                argv += ["--ssl_keyfile_path", str(key), "--ssl_certfile_path", str(cert)]
            env = {
                # its aiohttp pool holds 500 connections per upstream host by
                # default: sized above the held streams, like every pool here
                "AIOHTTP_CONNECTOR_LIMIT": str(opts.max_streams + 256),
                "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": str(opts.max_streams + 256),
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "ERROR",
                # No master key: measured with auth off, like the others.
                "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
            }
            targets.append(
                Target("LiteLLM" + suffix, family, secure, port, argv, env, log=work / f"{tag}.log")
            )
        else:
            raise ValueError(f"unknown target {family!r}")

    for family in families:
        add(family, False)
    if tls:
        for family in families:
            add(family, True)
    return upstream, targets


def smoke(target: Target, ca: ssl.SSLContext) -> None:
    """One non-streamed answer must be a chat completion: the target proxies."""
    request = urllib.request.Request(
        f"{'https' if target.tls else 'http'}://localhost:{target.port}/v1/chat/completions",
        data=chat_body().encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=ca) as resp:
        answer = json.load(resp)
    if answer.get("choices", [{}])[0].get("message", {}).get("role") != "assistant":
        raise RuntimeError(f"{target.name} answered {answer!r}")
