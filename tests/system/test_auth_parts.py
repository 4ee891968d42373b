"""The Firebase verifier asks no cloud for credentials: checked in a fresh interpreter,
where importing it is the first thing that happens."""

from __future__ import annotations

import pytest


def test_token_verification_alone_asks_no_cloud_for_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without a service account there are no credentials to look for: importing
    the verifier changes no environment variable, and neither building it nor
    using it asks google-auth for application default credentials (which would
    probe the cloud metadata server from a LAN node)."""
    import subprocess
    import sys

    import google.auth

    from fognode.auth import firebase

    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os; before = dict(os.environ); import fognode.auth.firebase; "
            "assert dict(os.environ) == before, set(os.environ) ^ set(before)",
        ],
        capture_output=True,
        text=True,
    )
    assert imported.returncode == 0, imported.stderr

    def no_default(*args: object, **kwargs: object) -> None:
        raise AssertionError("application default credentials were looked up")

    monkeypatch.setattr(google.auth, "default", no_default)
    verifier = firebase.FirebaseVerifier(project_id="demo-no-cloud")
    try:
        credential = verifier.app.credential.get_credential()
        assert type(credential).__name__ == "AnonymousCredentials"
    finally:
        verifier.close()
