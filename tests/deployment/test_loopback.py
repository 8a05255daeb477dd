"""Loopback deployments with TLS: SuperLink and SuperNodes on 127.0.0.1.

These tests start real `flower-superlink` and `flower-supernode` processes and
run the probe app in tests/deployment/probe_app, which queries every SuperNode
once per round and writes the replies to a JSON report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from federation_hub.config import load_hub_config
from federation_hub.credentials import (
    FederationCredentials,
    create_federation_credentials,
    load_federation_credentials,
)
from federation_hub.demo import create_demo_federation
from federation_hub.deployment import (
    DEPLOYMENT_MARKER_VARIABLE,
    DeploymentError,
    LoopbackDeployment,
    RunFailedError,
)
from federation_hub.report import REPORT_FILE
from policies.environment import NO_PHONE_HOME_ENVIRONMENT

pytestmark = pytest.mark.deployment

PROBE_APP = Path(__file__).parent / "probe_app"
ENROLLED = ["cleveland", "hungary", "switzerland", "va-long-beach"]
UNENROLLED = "intruder"
EXIT_WAIT_SECONDS = 60
# 127.0.0.1 and ::1 as /proc/net/tcp and /proc/net/tcp6 print them.
LOOPBACK_HEX = {"0100007F", "00000000000000000000000001000000"}


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> FederationCredentials:
    directory = tmp_path_factory.mktemp("credentials")
    return create_federation_credentials(directory, [*ENROLLED, UNENROLLED])


@pytest.fixture(scope="module")
def agent_configs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("agents")
    configs = {}
    for hospital_id in [*ENROLLED, UNENROLLED]:
        path = directory / f"{hospital_id}.yaml"
        path.write_text(f"hospital_id: {hospital_id}\n", encoding="utf-8")
        configs[hospital_id] = path
    return configs


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory,
    credentials: FederationCredentials,
    agent_configs: dict[str, Path],
) -> Iterator[LoopbackDeployment]:
    enrolled = {h: agent_configs[h] for h in ENROLLED}
    directory = tmp_path_factory.mktemp("deployment")
    with LoopbackDeployment(directory, credentials, enrolled) as running:
        yield running


def _marked_processes(deployment_id: str) -> list[int]:
    marker = f"{DEPLOYMENT_MARKER_VARIABLE}={deployment_id}".encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environment:
            pids.append(int(entry.name))
    return pids


def _environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    pairs = [item.decode().split("=", 1) for item in raw if b"=" in item]
    return {key: value for key, value in pairs}


def _online_nodes(deployment: LoopbackDeployment) -> int:
    listing = json.loads(
        deployment._flwr("supernode", "ls", "healthfed", "--format", "json")
    )
    return sum(1 for node in listing["nodes"] if node["status"] == "online")


def test_four_supernodes_complete_run(
    deployment: LoopbackDeployment, agent_configs: dict[str, Path], tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    result = deployment.run_app(
        PROBE_APP,
        {"expected-nodes": 4, "rounds": 1, "report-path": str(report_path)},
        timeout_seconds=120,
    )
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert result.status == "finished:completed"
    assert report["nodes"] == 4
    expected = sorted(str(agent_configs[h].resolve()) for h in ENROLLED)
    assert sorted(report["agent_configs"].values()) == expected


def test_failed_run_raises(deployment: LoopbackDeployment) -> None:
    with pytest.raises(RunFailedError) as raised:
        deployment.run_app(
            PROBE_APP, {"expected-nodes": 4, "fail": True}, timeout_seconds=120
        )
    assert raised.value.status == "finished:failed"
    assert "configured to fail" in raised.value.log_tail


def test_unenrolled_supernode_rejected(
    deployment: LoopbackDeployment,
    credentials: FederationCredentials,
    agent_configs: dict[str, Path],
) -> None:
    process = deployment.start_supernode(
        credentials.hospital(UNENROLLED), agent_configs[UNENROLLED]
    )
    return_code = process.wait(timeout=EXIT_WAIT_SECONDS)
    log = (
        deployment.directory / "supernodes" / UNENROLLED / f"supernode-{UNENROLLED}.log"
    ).read_text(encoding="utf-8")
    assert return_code != 0
    assert "Failed to activate SuperNode" in log
    assert _online_nodes(deployment) == len(ENROLLED)


def test_supernode_other_ca_rejected(
    deployment: LoopbackDeployment,
    credentials: FederationCredentials,
    agent_configs: dict[str, Path],
    tmp_path: Path,
) -> None:
    other = create_federation_credentials(tmp_path, ["cleveland"])
    process = deployment.start_supernode(
        credentials.hospital(UNENROLLED),
        agent_configs[UNENROLLED],
        root_certificate=other.ca_certificate,
    )
    return_code = process.wait(timeout=EXIT_WAIT_SECONDS)
    log = (
        deployment.directory / "supernodes" / UNENROLLED / f"supernode-{UNENROLLED}.log"
    ).read_text(encoding="utf-8")
    assert return_code != 0
    assert "CERTIFICATE_VERIFY_FAILED" in log


def test_processes_run_without_phone_home(deployment: LoopbackDeployment) -> None:
    pids = _marked_processes(deployment.deployment_id)
    homes = set()
    assert len(pids) >= 1 + len(ENROLLED)
    for pid in pids:
        environment = _environment_of(pid)
        for key, value in NO_PHONE_HOME_ENVIRONMENT.items():
            assert environment.get(key) == value, (pid, key)
        assert environment["FLWR_HOME"].startswith(str(deployment.directory))
        assert environment["RAY_TMPDIR"].startswith(str(deployment.directory))
        homes.add(environment["FLWR_HOME"])
    # The SuperLink and each SuperNode have their own FLWR_HOME.
    assert len(homes) >= 1 + len(ENROLLED)


def test_close_leaves_no_process(
    tmp_path: Path,
    credentials: FederationCredentials,
    agent_configs: dict[str, Path],
) -> None:
    enrolled = {"cleveland": agent_configs["cleveland"]}
    with LoopbackDeployment(tmp_path, credentials, enrolled) as running:
        running.run_app(PROBE_APP, {"expected-nodes": 1}, timeout_seconds=120)
        started = _marked_processes(running.deployment_id)
    assert len(started) >= 2
    assert _marked_processes(running.deployment_id) == []


KILLED_RUNNER_SCRIPT = """
import sys, time
from pathlib import Path
from federation_hub.credentials import load_federation_credentials
from federation_hub.deployment import LoopbackDeployment
credentials = load_federation_credentials(Path(sys.argv[1]))
configs = {"cleveland": Path(sys.argv[2])}
with LoopbackDeployment(Path(sys.argv[3]), credentials, configs) as running:
    print(running.deployment_id, flush=True)
    time.sleep(600)
"""


def test_killed_runner_leaves_no_process(
    tmp_path: Path,
    credentials: FederationCredentials,
    agent_configs: dict[str, Path],
) -> None:
    # SIGKILL skips close(); the processes must still end with their parent.
    runner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_RUNNER_SCRIPT,
            str(credentials.directory),
            str(agent_configs["cleveland"]),
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert runner.stdout is not None
        deployment_id = runner.stdout.readline().strip()
        started = _marked_processes(deployment_id)
    finally:
        runner.kill()
        runner.wait()
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    while _marked_processes(deployment_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(started) >= 2
    assert _marked_processes(deployment_id) == []


def test_start_failure_cleans_up(
    tmp_path: Path,
    credentials: FederationCredentials,
    agent_configs: dict[str, Path],
) -> None:
    # A SuperNode key file that Flower cannot parse makes start-up fail after
    # the SuperLink is running; entering must end the SuperLink again.
    broken = credentials.model_copy(
        update={
            "hospitals": tuple(
                h.model_copy(update={"supernode_key": h.identity_key})
                if h.hospital_id == "cleveland"
                else h
                for h in credentials.hospitals
            )
        }
    )
    deployment = LoopbackDeployment(
        tmp_path, broken, {"cleveland": agent_configs["cleveland"]}
    )
    with pytest.raises(DeploymentError, match="exited with code"):
        deployment.__enter__()
    assert _marked_processes(deployment.deployment_id) == []


def test_no_listener_outside_loopback(deployment: LoopbackDeployment) -> None:
    pids = set(_marked_processes(deployment.deployment_id))
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        except OSError:
            continue
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text(encoding="ascii").splitlines()[1:]:
            fields = line.split()
            # Field 3 is the socket state (0A = LISTEN), field 9 its inode.
            if fields[3] == "0A" and fields[9] in inodes:
                addresses.append(fields[1].split(":")[0])
    assert addresses
    for address in addresses:
        assert address in LOOPBACK_HEX, address


@pytest.mark.slow
def test_healthfed_app_one_round(tmp_path: Path) -> None:
    # The project's own ServerApp and ClientApp on four SuperNodes, one round
    # of the heart-disease demo study.
    federation = create_demo_federation(tmp_path / "federation")
    study_path = federation / "study.yaml"
    study = yaml.safe_load(study_path.read_text(encoding="utf-8"))
    study["rounds"] = 1
    study_path.write_text(yaml.safe_dump(study), encoding="utf-8")
    credentials = load_federation_credentials(federation)
    agent_configs = {
        h.hospital_id: federation / "hospitals" / h.hospital_id / "agent.yaml"
        for h in credentials.hospitals
    }

    with LoopbackDeployment(
        tmp_path / "deployment", credentials, agent_configs
    ) as running:
        result = running.run_app(
            run_config={"federation-dir": str(federation)}, timeout_seconds=900
        )

    report_path = load_hub_config(federation).reports_dir / REPORT_FILE
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert result.status == "finished:completed"
    assert len(agent_configs) == 4
    assert sorted(row["hospital_id"] for row in report["budget"]) == sorted(
        agent_configs
    )
