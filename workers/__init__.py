"""Running one service as several processes that share a port.

What is generic about fognode's worker processes, apart from what they run:
the connection between the supervisor and a worker (``channel``: framed,
multiplexed calls with cancellation and leases), typed messages on it
(``messages``: each declared once as a dataclass, its wire form derived and
checked, dispatched through a table per side), the sockets the workers
listen on (``ports``: one port, picked once, shared with SO_REUSEPORT), and
the worker processes themselves (``processes``: spawned, restarted with
backoff, stopped in order). The gateway decides what the calls mean
(admission, metrics, certificate reloads); nothing here knows of it.
"""
