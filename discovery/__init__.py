"""Finding fog nodes on the LAN with mDNS / DNS-SD.

The server side (advertiser.py) registers the node with python-zeroconf the
way the reference fog node's Avahi did, plus TXT records that let a client
choose a node (models, load, CA fingerprint). The client side (browser.py,
choose.py, cli.py) finds, ranks and uses the nodes.
"""
