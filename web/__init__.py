"""Pages fognode shows to people: rendered on the server (aiohttp-jinja2),
light enough for a phone, no front-end build.

* `onboarding`: the plain-HTTP page that gets a phone to trust the node's CA
  (QR code, fingerprint, steps for iOS and Android).

Like the other parts, this package knows nothing of the rest of fognode:
gateway/ hands it what it shows (the CA in its exported forms, the node's
addresses) as small option objects.
"""
