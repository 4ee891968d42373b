"""The phone onboarding page of a clinic's node, served alone on loopback.

Fixtures for the onboarding tests of every level (a test module imports the
ones it uses): the clinic's CA, the forms a phone downloads it in, the page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fognode.certs.authority import load_ca
from fognode.certs.export import CaExport, export_forms
from fognode.web.onboarding import OnboardingOptions, OnboardingSite, start_onboarding
from tests.support.helpers import free_port
from tests.support.pki import Pki, make_pki


@pytest.fixture
def clinic_pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "certs", common_name="fognode CA (clinic)")


@pytest.fixture
def ca_forms(clinic_pki: Pki) -> CaExport:
    return export_forms(load_ca(clinic_pki.paths, None, need_key=False).cert)


@pytest.fixture
async def onboarding(ca_forms: CaExport) -> AsyncIterator[OnboardingSite]:
    port = free_port()
    site = await start_onboarding(
        OnboardingOptions(
            ca=ca_forms,
            url=f"http://127.0.0.1:{port}",
            bind="127.0.0.1",
            port=port,
            node_name="Clinic fog node",
            other_urls=("http://[fd00::5]:8080",),
        )
    )
    yield site
    await site.stop()
