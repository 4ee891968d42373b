"""fognode gateway: the aiohttp app that wires TLS, auth, limits and the proxy."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fognode")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0"
