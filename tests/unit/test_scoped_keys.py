"""Scoped API keys, one part at a time: the entry and its terms, expiry at
each check, the comma-separated setting, the CLI's --expires, which models a
scope admits, and the tier and class a key brings to the shares stage.
Clocks are injected: nothing here waits for time to pass."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fognode.auth.api_keys import ApiKeyEntry, ApiKeys, entry_for, new_key, split_entries
from fognode.auth.cli import expiry
from fognode.auth.errors import AuthError
from fognode.auth.key_file import KeyFile, KeyFileWatch
from fognode.auth.principal import Principal
from fognode.gateway.config.settings import Settings
from fognode.gateway.options import share_options
from fognode.gateway.pipeline.scopes import in_scope, keep_in_scope
from fognode.gateway.pipeline.shares import Shares
from tests.support.clock import Clock

DAY = 86_400.0
SCOPED = dict(models=("llama3.2:1b", "hf.co/org/m:Q4_K_M"), tier="study", priority="batch")


def test_a_scoped_entry_reads_back_as_written_and_an_old_one_is_still_valid() -> None:
    key = new_key()
    line = entry_for(key, "study", admin=False, expires=1_800_000_000.0, **SCOPED)
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert line == (
        f"study:user:{digest} models=llama3.2:1b,hf.co/org/m:Q4_K_M "
        "expires=2027-01-15T08:00:00Z tier=study class=batch"
    )
    entry = ApiKeyEntry.parse(line)
    assert entry.models == SCOPED["models"] and entry.expires == 1_800_000_000.0
    assert (entry.tier, entry.priority) == ("study", "batch")
    assert ApiKeyEntry.parse(entry.line()) == entry
    old = ApiKeyEntry.parse(f"ops:admin:{digest}")
    assert old == ApiKeyEntry("ops", True, bytes.fromhex(digest))
    assert old.models is None and old.expires is None and old.terms() == {}


@pytest.mark.parametrize(
    "terms",
    [
        "models=",
        "models=a,,b",
        "tier=a tier=b",
        "colour=blue",
        "expires=soon",
        "fnk_pasted-key",
        "class=fnk_pasted-key",
    ],
)
def test_an_entry_with_a_term_that_does_not_read_is_refused_without_echoing_it(
    terms: str,
) -> None:
    with pytest.raises(ValueError) as refused:
        ApiKeyEntry.parse(f"study:user:{'0' * 64} {terms}")
    assert "study" in str(refused.value)
    assert "fnk_" not in str(refused.value) and "blue" not in str(refused.value)


def test_expiry_is_checked_at_each_request_not_at_load() -> None:
    key, clock = new_key(), Clock()
    entry = ApiKeyEntry.parse(entry_for(key, "trial", admin=False, expires=clock.now + 60))
    keys = ApiKeys([entry], clock=clock)
    principal = keys.check(key)
    assert principal is not None and principal.uid == "apikey:trial"
    clock.now += 60
    with pytest.raises(AuthError) as refused:
        keys.check(key)
    assert refused.value.status == 401 and refused.value.reason == "api_key_expired"
    assert key not in refused.value.message and "trial" not in refused.value.message
    assert keys.check(new_key()) is None  # an unknown key is still just unknown


def test_a_keys_standing_ends_when_it_expires_or_is_gone() -> None:
    """What a status-page session made with the key asks at each request."""
    key, clock = new_key(), Clock()
    entry = ApiKeyEntry.parse(entry_for(key, "operator", admin=True, expires=clock.now + 60))
    keys = ApiKeys([entry], clock=clock)
    standing = keys.standing("operator")
    assert standing is not None and standing.is_admin and standing.uid == "apikey:operator"
    assert keys.standing("nobody") is None
    clock.now += 60
    assert keys.standing("operator") is None


def test_a_key_brings_its_scope_to_its_caller() -> None:
    key = new_key()
    keys = ApiKeys([ApiKeyEntry.parse(entry_for(key, "study", admin=False, **SCOPED))])
    assert keys.check(key) == Principal(
        uid="apikey:study",
        kind="api_key",
        models=SCOPED["models"],
        tier="study",
        priority="batch",
    )
    named = keys.named("study")
    assert named is not None and named.principal() == keys.check(key)
    assert keys.named("nobody") is None


def test_the_setting_keeps_an_entrys_models_together() -> None:
    scoped = entry_for(new_key(), "study", admin=False, models=("a:1b", "b", "c:2"))
    plain = entry_for(new_key(), "ops", admin=True)
    assert split_entries(f"{plain}, {scoped} ,{plain}") == [plain, scoped, plain]
    assert split_entries("") == []
    settings = Settings(api_keys=f"{scoped},{plain}", api_keys_file=None)
    assert settings.api_keys == [scoped, plain]
    assert ApiKeyEntry.parse(settings.api_keys[0]).models == ("a:1b", "b", "c:2")


def test_the_key_file_holds_scoped_entries_and_a_change_of_scope_is_a_change(
    tmp_path: Path,
) -> None:
    path = tmp_path / "api-keys"
    key = new_key()
    file = KeyFile(path)
    file.add(entry_for(key, "study", admin=False, models=("a",)))
    watch = KeyFileWatch(path)
    assert watch.entries[0].models == ("a",)
    file.revoke("study")
    file.add(entry_for(key, "study", admin=False, models=("a", "b")))
    change = watch.check()
    assert change is not None and change.added == change.removed == ("study",)
    assert change.entries[0].models == ("a", "b")


def test_expires_takes_a_time_from_now_or_a_moment() -> None:
    now = 1_800_000_000.5
    assert expiry("30d", now) == 1_800_000_000 + 30 * DAY
    assert expiry("12h", now) == 1_800_000_000 + 12 * 3600
    assert expiry("2w", now) == 1_800_000_000 + 14 * DAY
    assert expiry("2027-02-01T00:00:00Z", now) == 1_801_440_000
    assert expiry("2027-02-01", now) == 1_801_440_000  # no zone: UTC
    for bad in ("0d", "-3d", "3y", "soon", "2020-01-01"):
        with pytest.raises(ValueError):
            expiry(bad, now)


def test_a_scope_admits_its_models_with_or_without_the_latest_tag() -> None:
    scope = ("llama3.2", "qwen2.5:0.5b", "hf.co/org/model")
    assert in_scope("llama3.2:latest", scope) and in_scope("llama3.2", scope)
    assert in_scope("qwen2.5:0.5b", scope) and in_scope("hf.co/org/model:latest", scope)
    assert not in_scope("llama3.2:1b", scope) and not in_scope("qwen2.5", scope)
    listing: dict[str, object] = {
        "data": [{"id": "llama3.2:latest"}, {"id": "phi4"}, {"id": 7}, "junk"]
    }
    assert keep_in_scope(listing, "data", "id", scope) == {"data": [{"id": "llama3.2:latest"}]}


def test_a_keys_own_tier_and_class_come_before_every_other_rule() -> None:
    settings = Settings(
        quota_tiers={"study": {}, "staff": {}},
        quota_api_key_tiers={"study": "staff"},
        priority_tier_classes={"staff": "interactive", "study": "batch"},
        api_keys_file=None,
    )
    shares = Shares(share_options(settings))
    plain = Principal(uid="apikey:study", kind="api_key")
    assert (shares.of(plain).tier, shares.of(plain).priority) == ("staff", "interactive")
    own_tier = Principal(uid="apikey:study", kind="api_key", tier="study")
    assert (shares.of(own_tier).tier, shares.of(own_tier).priority) == ("study", "batch")
    own_class = Principal(uid="apikey:study", kind="api_key", priority="batch")
    assert (shares.of(own_class).tier, shares.of(own_class).priority) == ("staff", "batch")
    # A class this node does not have (the key file is shared, the classes not):
    # the default, as for a claim.
    unknown = Principal(uid="apikey:study", kind="api_key", priority="vip")
    assert shares.of(unknown).priority == "interactive"
