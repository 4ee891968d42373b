"""What every layer of the gateway shares and nothing else: the OpenAI-shaped error and the
keys stages leave on a request. A leaf: it imports no other room.
"""
