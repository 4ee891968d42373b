"""The peer port's TLS: mutual, with this fog's CA, both ends.

A fog member is whoever proves, in a TLS handshake, that it holds a node
certificate of this fog (certs/peers.py says what one is). Both ends check:

* OpenSSL builds the chain to the fog's root, the only trust anchor on
  either side, and checks the purpose: clientAuth for the node that
  connects (so a server certificate, whose only purpose is serverAuth, is
  refused in the handshake), serverAuth for the node that answers;
* then fognode's marker, which OpenSSL cannot see: :meth:`PeerTls.check`
  (certs/peers.verify_peer_chain) on the certificate the other end
  presented, by the hop (gateway/upstreams/hop.py) before it sends
  anything, and by the peers stage (pipeline/peers.py) before a request
  on the peer port is read.

The peer port asks every client for a certificate (CERT_REQUIRED); the
phones' port never does, so a phone never sees a certificate request.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from ...certs.peers import NodeCredentials, PeerIdentity, PeerRefused, verify_peer_chain
from .tls import TLS12_CIPHERS

# Certificates already checked, by their digest: a member's connections and
# state requests present the same one, again and again.
_CHECKED = 256


@dataclass(frozen=True)
class PeerFiles:
    cert: Path  # this node's node certificate
    key: Path  # its key
    ca: Path  # the fog's root


class PeerTls:
    """This node's peer credentials, as TLS contexts and a certificate check."""

    def __init__(self, credentials: NodeCredentials, files: PeerFiles) -> None:
        self.credentials = credentials
        self.files = files
        self.name = credentials.name
        self._checked: OrderedDict[bytes, PeerIdentity] = OrderedDict()
        self.server = self._context(ssl.PROTOCOL_TLS_SERVER)
        self.client = self._context(ssl.PROTOCOL_TLS_CLIENT)

    def _context(self, protocol: int) -> ssl.SSLContext:
        ctx = ssl.SSLContext(protocol)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(TLS12_CIPHERS)
        ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
        ctx.set_alpn_protocols(["http/1.1"])
        if protocol == ssl.PROTOCOL_TLS_CLIENT:
            # Members are reached by address; what makes one is its certificate
            # (the root and the marker), not a name in it.
            ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(self.files.ca))
        ctx.load_cert_chain(str(self.files.cert), str(self.files.key))
        return ctx

    def check(self, der: bytes | None) -> PeerIdentity:
        """The member behind a certificate the other end presented; PeerRefused
        when it is not one (OpenSSL has checked the chain already)."""
        if not der:
            raise PeerRefused("the peer presented no certificate")
        digest = hashlib.sha256(der).digest()
        known = self._checked.get(digest)
        if known is not None and known.not_after > dt.datetime.now(dt.UTC):
            self._checked.move_to_end(digest)
            return known
        identity = verify_peer_chain(self.credentials.ca, [x509.load_der_x509_certificate(der)])
        self._checked[digest] = identity
        if len(self._checked) > _CHECKED:
            self._checked.popitem(last=False)
        return identity
