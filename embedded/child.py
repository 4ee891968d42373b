"""Entry point of the engine process: die with the parent, then run llama.cpp's server.

fognode starts ``python -m fognode.embedded.child PARENT_PID CONFIG_JSON``.
Before anything is loaded, this asks the kernel to kill the process when the
thread that started it goes away (PR_SET_PDEATHSIG), so a fognode that is
killed with SIGKILL, or crashes, leaves no model server behind holding memory
and a port. Doing it here rather than in a ``preexec_fn`` keeps fognode's
own process creation free of Python code between fork and exec, which is
unsafe in a process with threads.

The server is llama.cpp's own HTTP server (the one ``llama-server`` runs),
from the xllamacpp wheel: ``xllamacpp.Server`` listens on its own threads,
loads the model and returns; this process then only waits. Its parallel
slots share one copy of the model and are decoded together (continuous
batching). SIGTERM and SIGINT keep their default action, ending the process
at once: the server holds nothing that needs saving, and Python's own
Ctrl-C path (KeyboardInterrupt, then destructors that join the server's
threads) could hang (measured: up to 0.5 s right after start, and the
extension installs no handlers of its own).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from ..supervision import die_with_parent
from .engine import EngineConfig


def server_params(config: EngineConfig) -> Any:
    """llama.cpp's ``common_params`` for the config, through xllamacpp.

    Besides the config: no web UI (the wheel has none, and nothing but the
    gateway talks to this port), CORS limited to pages from localhost (none
    exist; it also silences the warning about an open CORS policy), the
    /metrics and /slots endpoints on, and no SSE comment pings, which end with
    a blank line that the SpeziLLMFog app reads as an empty event (the relay
    sends its own heartbeats).
    """
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = config.model_path
    params.model_alias = {config.alias}
    params.hostnames = ["127.0.0.1"]
    params.port = config.port
    params.n_parallel = config.slots
    params.n_ctx = config.slots * config.context_per_slot
    params.cpuparams.n_threads = config.threads
    params.cpuparams_batch.n_threads = config.threads
    if config.gpu_layers is not None:
        params.n_gpu_layers = config.gpu_layers
    params.sleep_idle_seconds = config.idle_seconds
    params.cache_ram_mib = config.prompt_cache_mib
    if config.chat_template is not None:
        params.chat_template = config.chat_template
    params.sampling.penalty_repeat = config.repeat_penalty
    params.ui = False
    params.cors_origins = "localhost"
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.sse_ping_interval = -1
    return params


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m fognode.embedded.child PARENT_PID CONFIG_JSON")
    die_with_parent(int(argv[0]))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    config = EngineConfig.from_json(argv[1])

    import xllamacpp

    try:
        server = xllamacpp.Server(server_params(config))  # returns once the model is loaded
    except (RuntimeError, ValueError) as exc:
        print(f"fognode: llama.cpp's server did not start: {exc}", flush=True)
        sys.exit(1)
    print(f"fognode: llama.cpp's server answers at {server.listening_address}", flush=True)
    # The server runs on its own threads; this one keeps the process (and the
    # reference that keeps the server alive) until a signal ends both.
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
