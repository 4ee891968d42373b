"""The fog: fognode nodes on one LAN that share the work phones spread at random.

A part like the others (no HTTP, no imports of other parts; gateway/ wires
it): the messages fog members send each other (:mod:`.state`, :mod:`.hop`),
and the table of members with what each last said (:mod:`.members`). Who
is a member is decided by mutual TLS with the fog's CA (certs/), never by
what a node announces; the gateway's node service feeds this table with
what the handshakes and the state exchange found.
"""
