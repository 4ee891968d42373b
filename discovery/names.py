"""The names fog nodes are found by: service types, domains, instance and host.

Kept apart from the browser and advertiser (and free of zeroconf) so that
settings and clients can name them without importing an mDNS stack.
"""

from __future__ import annotations

# The name a fog node's certificate carries and its clients send as Host (the
# SpeziLLMFog contract); a node's SRV host name is its own and differs.
SERVICE_NAME = "spezillmfog.local"
SERVICES = ("_https._tcp", "_http._tcp")
DOMAINS = ("local.", "spezillmfog.local.")
DEFAULT_TYPES = tuple(f"{service}.{domain}" for service in SERVICES for domain in DOMAINS)
DEFAULT_INSTANCE = "SpeziLLMFog Service"
