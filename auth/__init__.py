"""Authentication and the access policy: who is calling, and may they do this.

The reference fog node only checked that a Firebase ID token was authentic.
Here a request is admitted in three steps, each its own module: the bearer
credential is read (bearer.py), proven (Firebase ID token via firebase.py, or
a static API key via api_keys.py), and then judged against the operator's
policy (policy.py). Verification runs off the event loop and its results are
cached until the token expires (cache.py).
"""
