"""The API key file: edits written whole, a watch that takes a whole file or nothing.

The node follows this file while it runs (tests/system/newcomer has the
node's side); here the parts whose mistakes a running node would not
survive: a half-written or broken file must change nothing, a rewrite with
the same keys is no change, an edit keeps the file's owner and mode.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fognode.auth.api_keys import ApiKeyEntry, entry_for, new_key
from fognode.auth.key_file import KeyFile, KeyFileWatch, read_entries


def test_a_missing_file_holds_no_keys_and_its_first_entry_makes_it(tmp_path: Path) -> None:
    path = tmp_path / "data" / "api-keys"
    assert read_entries((), path) == []
    file = KeyFile(path)
    file.add(entry_for(new_key(), "phone", admin=False))
    assert [e.name for e in file.entries()] == ["phone"]
    assert path.read_text().startswith("#")  # says what the file is
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_name_is_one_key(tmp_path: Path) -> None:
    file = KeyFile(tmp_path / "api-keys")
    file.add(entry_for(new_key(), "phone", admin=False))
    with pytest.raises(ValueError, match="exists already"):
        file.add(entry_for(new_key(), "phone", admin=True))
    (tmp_path / "api-keys").write_text(
        entry_for(new_key(), "a", admin=False) + "\n" + entry_for(new_key(), "a", admin=False)
    )
    with pytest.raises(ValueError, match="two API keys are named 'a'"):
        file.entries()


def test_revoke_removes_that_line_only_and_keeps_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    keep, drop = entry_for(new_key(), "keep", admin=True), entry_for(new_key(), "drop", admin=False)
    path.write_text(f"# mine\n{keep}\n\n{drop}\n")
    path.chmod(0o640)
    os.chown(path, 0, 1)  # another group than ours: the service's, say
    removed = KeyFile(path).revoke("drop")
    assert removed is not None and removed.name == "drop"
    assert path.read_text() == f"# mine\n{keep}\n\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.stat().st_gid == 1
    assert KeyFile(path).revoke("drop") is None
    assert not [p for p in tmp_path.iterdir() if p.name != "api-keys"]  # no temporary left


def test_a_file_that_does_not_parse_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    path.write_text(entry_for(new_key(), "ok", admin=False) + "\nfnk_pasted-a-key-by-mistake\n")
    before = path.read_bytes()
    with pytest.raises(ValueError) as refused:
        KeyFile(path).revoke("ok")
    assert "fnk_pasted" not in str(refused.value)  # a key in the file is not echoed
    assert path.read_bytes() == before


def test_the_watch_hands_over_whole_sets_and_names_what_changed(tmp_path: Path) -> None:
    path = tmp_path / "api-keys"
    inline = entry_for(new_key(), "env", admin=True)
    watch = KeyFileWatch(path, [inline])
    assert [e.name for e in watch.entries] == ["env"]
    assert watch.check() is None  # nothing there, nothing changed

    file = KeyFile(path)
    file.add(entry_for(new_key(), "phone", admin=False))
    change = watch.check()
    assert change is not None and change.added == ("phone",) and change.removed == ()
    assert [e.name for e in change.entries] == ["env", "phone"]
    assert watch.check() is None

    # A rewrite with the same keys is no change; a broken file changes nothing.
    path.write_text(path.read_text() + "# a comment\n")
    assert watch.check() is None
    good = path.read_text()
    path.write_text(good + "phone2:user:nothex\n")
    with pytest.raises(ValueError, match="not hex"):
        watch.check()
    assert watch.check() is None  # said once per change of the file
    assert [e.name for e in watch.entries] == ["env", "phone"]

    # Revoked, and a key replaced under the same name: both reported.
    path.write_text(good)
    file.revoke("phone")
    change = watch.check()
    assert change is not None and change.removed == ("phone",) and change.added == ()
    file.add(entry_for(new_key(), "phone", admin=False))
    assert watch.check() is not None
    replaced = entry_for(new_key(), "phone", admin=True)
    file.revoke("phone")
    file.add(replaced)
    change = watch.check()
    assert change is not None and change.added == ("phone",) == change.removed
    assert change.entries[-1] == ApiKeyEntry.parse(replaced)
