"""Authentication and access: Firebase ID tokens, API keys, the access policy.

One concern of the one settings model (config/settings.py assembles them);
every field's description is what the operator reads in docs/configuration.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
)
from pydantic_settings import NoDecode

from ..paths import (
    default_api_keys_file,
)


class AuthSettings(BaseModel):
    """Authentication and access: Firebase ID tokens, API keys, the access policy."""

    auth: Literal["firebase", "none"] = Field(
        "firebase",
        description="`firebase`: every request but the probes needs a Firebase ID token or an "
        "API key. `none`: no checks at all, for local development only (refused on a "
        "non-loopback address unless `allow_no_auth_on_lan`).",
    )
    allow_no_auth_on_lan: bool = Field(
        False, description="Let `auth=none` listen on a non-loopback address. Dangerous."
    )
    firebase_project_id: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "FOGNODE_FIREBASE_PROJECT_ID", "firebase_project_id", "GOOGLE_CLOUD_PROJECT"
        ),
        description="Firebase project whose ID tokens are accepted (the tokens' `aud`). "
        "Default: the service account's project, or `GOOGLE_CLOUD_PROJECT`.",
    )
    firebase_credentials_file: Path | None = Field(
        None,
        validation_alias=AliasChoices(
            "FOGNODE_FIREBASE_CREDENTIALS_FILE",
            "firebase_credentials_file",
            "GOOGLE_APPLICATION_CREDENTIALS",
        ),
        description="Service account key (JSON). Needed for revocation checks and "
        "`fognode claims`; token signatures alone are checked with Google's public keys.",
    )
    firebase_auth_emulator_host: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "FOGNODE_FIREBASE_AUTH_EMULATOR_HOST",
            "firebase_auth_emulator_host",
            "FIREBASE_AUTH_EMULATOR_HOST",
        ),
        description="`host:port` of the Firebase Auth Emulator (development). Its tokens are "
        "unsigned, so this is refused together with TLS unless `allow_emulator_with_tls`.",
    )
    allow_emulator_with_tls: bool = Field(
        False, description="Accept emulator tokens on a TLS (production-looking) node."
    )
    firebase_certs_url: str = Field(
        "https://www.googleapis.com/robot/v1/metadata/x509/securetoken@system.gserviceaccount.com",
        description="Where the public keys that sign ID tokens are fetched. Change only to "
        "test against a local key set.",
    )
    check_revoked: bool = Field(
        False,
        description="Also check that the token was not revoked and the user is not disabled "
        "(one Admin API call per new token; needs the service account).",
    )
    revocation_recheck_seconds: float = Field(
        300,
        gt=0,
        description="With `check_revoked`, how long a verified token is trusted before it is "
        "checked again.",
    )
    token_cache_size: int = Field(
        10_000, ge=0, description="Verified tokens remembered until they expire (0: no cache)."
    )
    auth_threads: int = Field(
        4, ge=1, description="Threads for firebase-admin (it blocks; kept off the event loop)."
    )
    required_claims: dict[str, Any] = Field(
        default_factory=dict,
        description='Custom claims every user must have, as JSON: `{"fog": true}`, or '
        '`{"role": ["clinician", "admin"]}` for one of several values.',
    )
    allowed_uids: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="If set, only these Firebase uids (comma-separated or JSON list).",
    )
    allowed_email_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="If set, only accounts whose email is in one of these domains.",
    )
    require_email_verified: bool = Field(
        False, description="Only accounts with a verified email address."
    )
    admin_claim: str = Field(
        "admin",
        min_length=1,
        description="Custom claim (set to true) that allows model management (`/api/pull`, "
        "`/api/push`, `/api/create`, `/api/copy`, `/api/delete`, `/api/blobs`).",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Static API keys as `name:user|admin:sha256hex` entries, each optionally "
        "scoped by space-separated terms `models=m1,m2 expires=2027-01-06T12:00:00Z tier=T "
        "class=C` (comma-separated or JSON list; an entry's `models=` commas stay with it); "
        "`fognode apikey create --print-only` makes them.",
    )
    api_keys_file: Path | None = Field(
        default_factory=default_api_keys_file,
        description="File with one `name:user|admin:sha256hex` entry per line, optionally "
        "followed by its scope (`models=m1,m2 expires=... tier=T class=C`: the only models the "
        "key may use, when it stops working, its budgets and its queue; `#` starts a "
        "comment): `<data dir>/api-keys` (setup.sh makes it; `fognode apikey create` and "
        "`revoke` edit it). The node watches it: a key added or revoked takes effect on every "
        "worker within `api_keys_check_interval` seconds, without a restart. A missing file "
        "holds no keys; a file that does not parse changes nothing (the node keeps its keys "
        "and logs why).",
    )
    api_keys_check_interval: float = Field(
        2.0,
        gt=0,
        description="Seconds between two looks at `api_keys_file` (a `stat`; the file is "
        "read only when it changed).",
    )
