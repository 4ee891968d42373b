"""Local certificate authority: issue, inspect, renew and export certificates.

The reference fog node used an openssl script with a passphrase written into
it. Here the CA and the server certificate are made with `cryptography`, the
CA key is encrypted with a passphrase that comes from the environment, a
file or a prompt, and nothing shells out.
"""
