"""``waconv fake-graph``: the fake Graph API as a command, for trying waconv without Meta."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.production.helpers import ROOT, environment, poll, spawn
from waconv.clock import utcnow
from waconv.graph.client import GraphClient
from waconv.graph.errors import GraphError

pytestmark = pytest.mark.slow


def test_fake_graph_prints_its_url_and_token_then_each_accepted_event(tmp_path: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "waconv.cli", "fake-graph", "--port", str(port)]
    command += ["--token", "try-it"]
    with spawn("fake-graph", command, environment("sqlite://"), tmp_path) as child:
        poll(lambda: "WACONV_ACCESS_TOKEN" in child.stdout(), 30, "fake-graph start")
        assert f"export WACONV_GRAPH_URL=http://127.0.0.1:{port}" in child.stdout()
        assert "export WACONV_ACCESS_TOKEN=try-it" in child.stdout()

        with GraphClient(f"http://127.0.0.1:{port}", "v26.0") as graph:
            dataset = graph.create_dataset("102290129340398", "try-it")
            event = {
                "event_name": "Purchase",
                "event_time": int(utcnow().timestamp()),
                "event_id": "e-1",
                "action_source": "business_messaging",
                "messaging_channel": "whatsapp",
                "user_data": {
                    "whatsapp_business_account_id": "102290129340398",
                    "ctwa_clid": "AR1",
                },
                "custom_data": {"value": 9.5, "currency": "USD"},
            }
            graph.send_events(dataset, "try-it", [event])
            with pytest.raises(GraphError):  # Meta's validation: the token is checked
                graph.send_events(dataset, "another-token", [event])

        poll(lambda: '"event_id": "e-1"' in child.stdout(), 10, "the event line")
        lines = [json.loads(line) for line in child.stdout().splitlines() if line.startswith("{")]
        assert lines == [event]
        child.stop()


def test_fake_graph_on_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "waconv.cli", "fake-graph", "--port", str(port)],
            cwd=ROOT,
            env=environment("sqlite://"),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot listen on 127.0.0.1:{port}")
    assert result.stderr.count("\n") == 1
