"""Two OpenSSL settings Python's ssl module does not expose, set on the SSL_CTX itself.

- The key-exchange groups (`SSL_CTX_set1_groups_list`). Python 3.11 has no
  `set_groups`; left alone, OpenSSL accepts ffdhe2048..8192, X448 and P-521.
  A client that asks for ffdhe8192 costs the server ~120-135 ms of CPU per
  handshake against 1-2 ms for X25519 (issue 24): about 16 handshakes a
  second fill two cores. Mozilla's guidelines allow X25519, P-256, P-384.
- The session ticket keys (`SSL_CTX_set_tlsext_ticket_keys`). Each process
  otherwise makes its own at random, and with several workers on one port a
  returning client resumes only if it happens to reach the worker that
  issued its ticket.

Why ctypes on the context rather than an OpenSSL configuration file
(OPENSSL_CONF with `Groups = ...`): a configuration applies to every
SSL_CTX of the process, the clients to upstreams and to Google's key
servers included, must be in place before libssl initialises (before
anything imports ssl), and fails silently when a section name is wrong.
Here the setting applies to exactly the listening contexts, and each call is
checked: the pointer is taken from the context object (`PySSLContext` starts
with `SSL_CTX *ctx` right after the object header), confirmed by reading the
context's options through OpenSSL and comparing them with Python's view, and
every control call's result is checked. If anything does not match, serving
refuses to start rather than silently accepting every group.
"""

from __future__ import annotations

import _ssl
import ctypes
import ssl
import weakref
from functools import cache

# From openssl/ssl.h (stable since 1.1.0).
SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
SSL_CTRL_SET_GROUPS_LIST = 92
TICKET_KEY_BYTES = 80  # 16 name + 32 HMAC + 32 AES, OpenSSL's format


class OpenSSLUnavailable(RuntimeError):
    """The running Python's libssl cannot be reached safely: say so, do not guess."""


@cache
def _libssl() -> ctypes.CDLL:
    # The _ssl extension is linked against the libssl Python uses; symbols
    # are looked up through it (and its dependencies), never another copy.
    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    return lib


_POINTERS: weakref.WeakKeyDictionary[ssl.SSLContext, int] = weakref.WeakKeyDictionary()


def _ctx_pointer(ctx: ssl.SSLContext) -> int:
    """The SSL_CTX behind ``ctx``, checked once per context."""
    known = _POINTERS.get(ctx)
    if known is None:
        known = _POINTERS[ctx] = _find_pointer(ctx)
    return known


def _find_pointer(ctx: ssl.SSLContext) -> int:
    header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
    pointer = ctypes.c_void_p.from_address(id(ctx) + header).value
    if not pointer:
        raise OpenSSLUnavailable("no SSL_CTX behind the Python SSL context")
    # Two nearly unique values: flip an option bit through Python, read it back
    # through OpenSSL, so a wrong pointer cannot pass by chance.
    lib = _libssl()
    before = ctx.options
    for wanted in (before ^ ssl.OP_NO_COMPRESSION, before):
        ctx.options = wanted
        if lib.SSL_CTX_get_options(pointer) != int(ctx.options):
            ctx.options = before
            raise OpenSSLUnavailable("the SSL context's layout is not the one expected")
    return pointer


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Limit key exchange (TLS 1.3 key shares, TLS 1.2 ECDHE curves) to ``groups``."""
    result = _libssl().SSL_CTX_ctrl(
        _ctx_pointer(ctx), SSL_CTRL_SET_GROUPS_LIST, 0, ctypes.c_char_p(groups.encode())
    )
    if result != 1:
        raise OpenSSLUnavailable(f"OpenSSL refused the groups {groups!r}")


def set_ticket_keys(ctx: ssl.SSLContext, keys: bytes) -> None:
    """Encrypt and accept session tickets with ``keys`` (80 bytes) from now on."""
    if len(keys) != TICKET_KEY_BYTES:
        raise ValueError(f"ticket keys are {TICKET_KEY_BYTES} bytes")
    buffer = ctypes.create_string_buffer(keys, len(keys))
    result = _libssl().SSL_CTX_ctrl(
        _ctx_pointer(ctx), SSL_CTRL_SET_TLSEXT_TICKET_KEYS, len(keys), buffer
    )
    if result != 1:
        raise OpenSSLUnavailable("OpenSSL refused the session ticket keys")
