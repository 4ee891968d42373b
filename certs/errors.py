"""The one exception type of certs/: its message is meant for the operator."""


class CertError(Exception):
    """A certificate, key or passphrase problem, explained in plain words."""
