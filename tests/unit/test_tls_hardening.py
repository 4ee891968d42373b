"""TLS session tickets: keys shared by a secret and changed with the period, and
the OpenSSL context they are set on checked first. The handshakes themselves
(s_client, resumption across workers, testssl.sh, sslyze) are in
tests/system/test_tls_hardening.py."""

from __future__ import annotations

import ssl

import pytest

from fognode.gateway.transport.openssl import OpenSSLUnavailable, set_ticket_keys
from fognode.gateway.transport.tls import TLS_GROUPS, TicketKeys

ALLOWED = ("X25519", "P-256", "P-384")


def test_ticket_keys_are_shared_by_secret_and_change_with_the_period() -> None:
    one, same = TicketKeys(b"s" * 32, period=60), TicketKeys(b"s" * 32, period=60)
    assert one.key(one.index(120.0)) == same.key(same.index(150.0))  # another process, same key
    assert one.key(2) != one.key(3)  # the next period's
    assert TicketKeys(b"t" * 32).key(2) != one.key(2)
    assert len(one.key(0)) == 80
    with pytest.raises(ValueError, match="80 bytes"):
        set_ticket_keys(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), b"short")
    assert ":".join(ALLOWED) == TLS_GROUPS


def test_a_context_whose_pointer_does_not_check_out_is_refused() -> None:
    """The SSL_CTX pointer is confirmed against Python's own view of the
    options; anything else than an SSLContext laid out as expected fails."""

    class NotAContext(ssl.SSLContext):
        pass

    fake = NotAContext(ssl.PROTOCOL_TLS_SERVER)
    set_ticket_keys(fake, bytes(80))  # a real context, subclassed: still fine
    with pytest.raises((OpenSSLUnavailable, TypeError, AttributeError)):
        set_ticket_keys(object(), bytes(80))  # type: ignore[arg-type]
