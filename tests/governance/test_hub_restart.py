"""Issue 19 item 6 on real loopback processes: a TLS hub restarts on its saved state.

Before: the restart re-registered every site key and failed with "Public key already in use".
"""

from __future__ import annotations

import pytest

from fedomop.federated.client_app import NO_POLICY
from fedomop.federated.deploy import LocalDeployment


@pytest.mark.slow
def test_a_tls_hub_restarts_on_its_saved_state_and_its_site_rejoins(tmp_path):
    deployment = LocalDeployment(
        tmp_path / "deploy",
        {"site_a": str(tmp_path / "site_a.duckdb")},  # never opened: no message is sent
        policies={"site_a": NO_POLICY},
        certs=tmp_path / "certs",
    )
    with deployment as hub:
        hub.wait_until_online(120)
    assert hub.state_file.exists()
    with deployment as restarted:  # same workdir, same superlink.db, same keys
        assert restarted.wait_until_online(120) >= 0
    # the SuperLink still answers the re-registration with "already in use"; the restart takes it as registered
    assert "Public key already in use" in restarted.logs()
