"""Loopback Flower deployment: one SuperLink and one SuperNode per hospital.

`LoopbackDeployment` starts `flower-superlink` and the SuperNodes of Flower 1.42
on 127.0.0.1 with TLS and SuperNode authentication. It runs a Flower app with
`flwr run`, waits for the run to finish and reads its final status, because
`flwr run` exits 0 even when the run fails. Every process gets a private
FLWR_HOME and RAY_TMPDIR, free ports chosen at start-up, and Flower's
telemetry, update check and runtime dependency installation switched off.

How Flower 1.42 moves one message (read from its sources): the SuperLink serves
its Fleet, Control and Runtime APIs over HTTPS on one port. A SuperNode polls
the Fleet API and sleeps 3 s after an empty poll; a `flower-superexec` child of
the SuperNode polls the SuperNode's Runtime API for tasks (every 1 s unless
FLWR_SUPEREXEC_TASK_POLL_INTERVAL is set) and starts a fresh `flwr-clientapp`
process for each message, which imports the app before it can answer.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from pydantic import BaseModel, ConfigDict

from federation_hub.credentials import FederationCredentials, HospitalCredentials
from policies.environment import NO_PHONE_HOME_ENVIRONMENT

logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""Folder of healthfed's pyproject.toml, whose Flower app `run_app` runs by default."""
CONNECTION_NAME = "healthfed"
"""Name of the SuperLink connection in the private FLWR_HOME/config.toml."""


DEPLOYMENT_MARKER_VARIABLE = "HEALTHFED_DEPLOYMENT_ID"
"""Environment variable inherited by every descendant process. Shutdown ends
the processes that carry this deployment's value and no other process."""

RunConfigValue = str | int | float | bool

_STOP_GRACE_SECONDS = 5.0
_STATUS_POLL_SECONDS = 0.5
_LOG_TAIL_LINES = 40
_CLI_TIMEOUT_SECONDS = 120


class DeploymentError(RuntimeError):
    """A deployment process failed to start, exited early or a command failed."""


class RunFailedError(DeploymentError):
    """A Flower run finished with a status other than `finished:completed`."""

    def __init__(self, run_id: int, status: str, details: str, log_tail: str) -> None:
        super().__init__(
            f"run {run_id} ended with status {status!r} ({details or 'no details'}); "
            f"see the logs below and in the deployment directory\n{log_tail}"
        )
        self.run_id = run_id
        self.status = status
        self.details = details
        self.log_tail = log_tail


class RunTimeoutError(DeploymentError):
    """A Flower run did not finish within the allowed time and was stopped."""


class RunResult(BaseModel):
    """Final state of a Flower run on the deployment."""

    model_config = ConfigDict(frozen=True)

    run_id: int
    status: str
    """Flower's status text, `finished:completed` for a successful run."""
    elapsed_seconds: float
    """Wall-clock time from `flwr run` to the observed final status."""


class _ManagedProcess:
    """A child process started in its own process group, with its log file."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log_path: Path):
        self.name = name
        self.process = process
        self.log_path = log_path

    def stop(self) -> None:
        """Send SIGTERM to the process group, then SIGKILL after a grace period."""
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=_STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop on SIGTERM; sending SIGKILL", self.name)
        # Children of the group leader may outlive it, so the group gets SIGKILL.
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


class LoopbackDeployment:
    """SuperLink and enrolled SuperNodes on 127.0.0.1 with TLS, as a context manager.

    `agent_configs` maps each hospital id to the agent configuration file that
    its SuperNode passes to the ClientApp as node config `agent-config`. Only
    those hospitals are registered with the SuperLink, and other hospitals of
    `credentials` stay unenrolled. Logs go to `directory`. Child processes do
    not inherit this process's FLWR_* and RAY_* variables.

    Entering starts the SuperLink, registers the SuperNode public keys, starts
    the SuperNodes and waits until all of them are online. Leaving, also after
    an error, ends every process the deployment started, including the
    ServerApp and ClientApp processes that Flower starts for a run.
    """

    def __init__(
        self,
        directory: Path,
        credentials: FederationCredentials,
        agent_configs: Mapping[str, Path],
        *,
        superexec_poll_interval_seconds: float | None = None,
        startup_timeout_seconds: float = 90.0,
    ) -> None:
        """Validate the arguments; nothing starts before `__enter__`.

        `superexec_poll_interval_seconds` sets FLWR_SUPEREXEC_TASK_POLL_INTERVAL
        (0.01-60 s, Flower's default 1 s) for the processes that start the
        ServerApp and ClientApps; None keeps Flower's default.
        """
        for hospital_id, agent_config in agent_configs.items():
            credentials.hospital(hospital_id)
            _check_node_config_path(hospital_id, Path(agent_config))
        if superexec_poll_interval_seconds is not None and not (
            0.01 <= superexec_poll_interval_seconds <= 60.0
        ):
            raise ValueError(
                "superexec_poll_interval_seconds: must be between 0.01 and 60, "
                f"got {superexec_poll_interval_seconds}"
            )
        self.directory = Path(directory).resolve()
        self.credentials = credentials
        self.agent_configs = {h: Path(p).resolve() for h, p in agent_configs.items()}
        self.superexec_poll_interval_seconds = superexec_poll_interval_seconds
        self.startup_timeout_seconds = startup_timeout_seconds
        self.deployment_id = uuid.uuid4().hex
        self.superlink_port = 0
        self.control_home = self.directory / "control" / "flwr-home"
        self._processes: list[_ManagedProcess] = []
        self._supernodes: dict[str, _ManagedProcess] = {}

    @property
    def superlink_address(self) -> str:
        """Return `host:port` of the SuperLink's Fleet, Control and Runtime APIs."""
        return f"{LOOPBACK_HOST}:{self.superlink_port}"

    def __enter__(self) -> LoopbackDeployment:
        """Start the SuperLink and every SuperNode; end them all if one fails."""
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """End every process of the deployment."""
        self.close()

    def start(self) -> None:
        """Start the SuperLink, register and start the SuperNodes, wait until online."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._start_superlink()
        self._write_connection_config()
        for hospital_id in self.agent_configs:
            self.register_supernode(self.credentials.hospital(hospital_id))
        for hospital_id, agent_config in self.agent_configs.items():
            self.start_supernode(self.credentials.hospital(hospital_id), agent_config)
        self.wait_for_online_nodes(len(self.agent_configs))
        logger.info(
            "loopback deployment %s ready: SuperLink %s, %d SuperNodes",
            self.deployment_id,
            self.superlink_address,
            len(self.agent_configs),
        )

    def close(self) -> None:
        """End every process that this deployment started, newest first."""
        for managed in reversed(self._processes):
            managed.stop()
        self._processes.clear()
        self._supernodes.clear()
        _kill_marked_processes(self.deployment_id)
        logger.info("loopback deployment %s stopped", self.deployment_id)

    def register_supernode(self, hospital: HospitalCredentials) -> None:
        """Register a hospital's SuperNode public key with the SuperLink."""
        self._flwr(
            "supernode",
            "register",
            str(hospital.supernode_public_key),
            CONNECTION_NAME,
            "--name",
            hospital.hospital_id,
            "--format",
            "json",
        )
        logger.info("registered the SuperNode key of %s", hospital.hospital_id)

    def start_supernode(
        self,
        hospital: HospitalCredentials,
        agent_config: Path,
        *,
        root_certificate: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a SuperNode that authenticates with the hospital's key.

        `root_certificate` is the CA certificate the SuperNode trusts, by
        default the federation's. The SuperNode is not waited for: one whose key
        is not registered, or that does not trust the SuperLink's certificate,
        exits with an error, which the caller observes on the returned process.
        """
        agent_config = Path(agent_config).resolve()
        _check_node_config_path(hospital.hospital_id, agent_config)
        node_directory = self.directory / "supernodes" / hospital.hospital_id
        node_config = (
            f"agent-config={json.dumps(str(agent_config))} "
            f"hospital-id={json.dumps(hospital.hospital_id)}"
        )
        command = [
            _executable("flower-supernode"),
            "--superlink",
            self.superlink_address,
            "--root-certificates",
            str(root_certificate or self.credentials.ca_certificate),
            "--auth-supernode-private-key",
            str(hospital.supernode_key),
            "--node-config",
            node_config,
            "--isolation",
            "subprocess",
            "--host",
            LOOPBACK_HOST,
            "--port",
            str(_free_port()),
        ]
        managed = self._spawn(
            f"supernode-{hospital.hospital_id}", command, node_directory
        )
        self._supernodes[hospital.hospital_id] = managed
        return managed.process

    def wait_for_online_nodes(self, count: int) -> None:
        """Wait until `count` SuperNodes are online; raise if one exits first."""
        deadline = time.monotonic() + self.startup_timeout_seconds
        while True:
            for managed in self._supernodes.values():
                if managed.process.poll() is not None:
                    raise DeploymentError(
                        f"{managed.name} exited with code {managed.process.returncode} "
                        f"during start-up\n{self.log_tail()}"
                    )
            listing = json.loads(
                self._flwr("supernode", "ls", CONNECTION_NAME, "--format", "json")
            )
            online = [n for n in listing.get("nodes", []) if n["status"] == "online"]
            if len(online) >= count:
                return
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"only {len(online)} of {count} SuperNodes came online within "
                    f"{self.startup_timeout_seconds:.0f} s\n{self.log_tail()}"
                )
            time.sleep(_STATUS_POLL_SECONDS)

    def run_app(
        self,
        app_directory: Path = PROJECT_ROOT,
        run_config: Mapping[str, RunConfigValue] | None = None,
        *,
        timeout_seconds: float = 600.0,
    ) -> RunResult:
        """Run the Flower app in `app_directory` and wait for its final status.

        Raises:
            RunFailedError: the run finished as failed or stopped; the message
                carries the status and the tail of every log.
            RunTimeoutError: no final status within `timeout_seconds`; the run
                is stopped first.

        """
        started = time.monotonic()
        arguments = ["run", str(Path(app_directory).resolve()), CONNECTION_NAME]
        for key, value in (run_config or {}).items():
            arguments += ["--run-config", f"{key}={_toml_value(value)}"]
        output = json.loads(self._flwr(*arguments, "--format", "json"))
        if not output.get("success") or output.get("run-id") is None:
            raise DeploymentError(f"flwr run did not start a run: {output}")
        run_id = int(output["run-id"])
        logger.info("started run %d of %s", run_id, app_directory)

        deadline = started + timeout_seconds
        while True:
            run = self.run_status(run_id)
            status = str(run["status"])
            if status.startswith("finished"):
                break
            if time.monotonic() > deadline:
                self._flwr("stop", str(run_id), CONNECTION_NAME)
                raise RunTimeoutError(
                    f"run {run_id} did not finish within {timeout_seconds:.0f} s "
                    f"(last status {status!r}); it was stopped\n{self.log_tail()}"
                )
            time.sleep(_STATUS_POLL_SECONDS)

        elapsed = time.monotonic() - started
        self._save_run_log(run_id)
        if status != "finished:completed":
            raise RunFailedError(
                run_id, status, str(run.get("status-details", "")), self.log_tail()
            )
        logger.info("run %d completed in %.1f s", run_id, elapsed)
        return RunResult(run_id=run_id, status=status, elapsed_seconds=elapsed)

    def run_status(self, run_id: int) -> dict[str, object]:
        """Return the `flwr ls --run-id` JSON record of one run."""
        listing = json.loads(
            self._flwr(
                "ls", CONNECTION_NAME, "--run-id", str(run_id), "--format", "json"
            )
        )
        runs = listing.get("runs", [])
        if len(runs) != 1:
            raise DeploymentError(
                f"flwr ls returned {len(runs)} records for run {run_id}"
            )
        record: dict[str, object] = runs[0]
        return record

    def _save_run_log(self, run_id: int) -> None:
        """Write the run's ServerApp log (`flwr log --show`) to runs/<run_id>.log."""
        try:
            text = self._flwr("log", str(run_id), CONNECTION_NAME, "--show")
        except DeploymentError as err:
            logger.warning("could not read the log of run %d: %s", run_id, err)
            return
        runs = self.directory / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        (runs / f"{run_id}.log").write_text(text, encoding="utf-8")

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """Return the last `lines` lines of every process log, one section each."""
        sections = []
        for log_path in sorted(self.directory.glob("**/*.log")):
            text = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
            tail = "\n".join(text[-lines:])
            sections.append(f"--- {log_path.relative_to(self.directory)} ---\n{tail}")
        return "\n".join(sections)

    def _start_superlink(self) -> None:
        self.superlink_port = _free_port()
        command = [
            _executable("flower-superlink"),
            "--ssl-ca-certfile",
            str(self.credentials.ca_certificate),
            "--ssl-certfile",
            str(self.credentials.superlink_certificate),
            "--ssl-keyfile",
            str(self.credentials.superlink_key),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--isolation",
            "subprocess",
            "--host",
            LOOPBACK_HOST,
            "--port",
            str(self.superlink_port),
        ]
        managed = self._spawn("superlink", command, self.directory / "superlink")
        self._wait_for_superlink(managed)

    def _wait_for_superlink(self, managed: _ManagedProcess) -> None:
        context = ssl.create_default_context(
            cafile=str(self.credentials.ca_certificate)
        )
        url = f"https://{self.superlink_address}/health"
        deadline = time.monotonic() + self.startup_timeout_seconds
        while True:
            if managed.process.poll() is not None:
                raise DeploymentError(
                    f"SuperLink exited with code {managed.process.returncode} during "
                    f"start-up\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, context=context, timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise DeploymentError(
                    f"SuperLink health check at {url} timed out after "
                    f"{self.startup_timeout_seconds:.0f} s\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def _write_connection_config(self) -> None:
        """Write FLWR_HOME/config.toml with one TLS connection to this SuperLink."""
        self.control_home.mkdir(parents=True, exist_ok=True)
        ca_certificate = json.dumps(str(self.credentials.ca_certificate))
        (self.control_home / "config.toml").write_text(
            "[superlink]\n"
            f'default = "{CONNECTION_NAME}"\n\n'
            f"[superlink.{CONNECTION_NAME}]\n"
            f'address = "{self.superlink_address}"\n'
            f"root-certificates = {ca_certificate}\n",
            encoding="utf-8",
        )

    def _environment(self, home: Path) -> dict[str, str]:
        """Return a child environment with private Flower and Ray directories."""
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("FLWR_", "RAY_"))
        }
        environment.update(NO_PHONE_HOME_ENVIRONMENT)
        environment["FLWR_HOME"] = str(home / "flwr-home")
        environment["RAY_TMPDIR"] = str(home / "ray-tmp")
        environment[DEPLOYMENT_MARKER_VARIABLE] = self.deployment_id
        # Flower starts flower-superexec, flwr-serverapp and flwr-clientapp by
        # name, so this interpreter's scripts directory comes first on PATH.
        scripts = str(Path(sys.executable).parent)
        environment["PATH"] = os.pathsep.join([scripts, environment.get("PATH", "")])
        if self.superexec_poll_interval_seconds is not None:
            environment["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(
                self.superexec_poll_interval_seconds
            )
        (home / "flwr-home").mkdir(parents=True, exist_ok=True)
        (home / "ray-tmp").mkdir(parents=True, exist_ok=True)
        return environment

    def _spawn(self, name: str, command: Sequence[str], home: Path) -> _ManagedProcess:
        home.mkdir(parents=True, exist_ok=True)
        log_path = home / f"{name}.log"
        environment = self._environment(home)
        log_file: IO[bytes]
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                _with_parent_death_signal(command),
                cwd=home,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        managed = _ManagedProcess(name, process, log_path)
        self._processes.append(managed)
        logger.info("started %s (pid %d), log %s", name, process.pid, log_path)
        return managed

    def _flwr(self, *arguments: str) -> str:
        """Run one `flwr` CLI command against this SuperLink and return its stdout."""
        home = self.control_home.parent
        environment = self._environment(home)
        command = [_executable("flwr"), *arguments]
        try:
            completed = subprocess.run(
                command,
                cwd=home,
                env=environment,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=_CLI_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise DeploymentError(
                f"`{shlex.join(command)}` timed out after {_CLI_TIMEOUT_SECONDS} s"
            ) from err
        stdout = completed.stdout.decode("utf-8", errors="replace")
        if completed.returncode != 0:
            stderr = completed.stderr.decode("utf-8", errors="replace")
            raise DeploymentError(
                f"`{shlex.join(command)}` failed with code {completed.returncode}:\n"
                f"{stdout}{stderr}"
            )
        return stdout


# Runs before the SuperLink or SuperNode. It sets the Linux parent-death signal
# (prctl PR_SET_PDEATHSIG = 1) to SIGKILL, which the kernel sends when the thread
# that started the process dies, then execs the real command. If that parent is
# already gone, the wrapper exits at once.
_PARENT_DEATH_WRAPPER = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def _with_parent_death_signal(command: Sequence[str]) -> list[str]:
    """Wrap `command` so that it dies with the calling thread, also on SIGKILL.

    Without it, a test runner killed by a timeout leaves the SuperLink and
    SuperNodes running, because `close()` never runs. Flower's own children
    (flower-superexec and the app processes) watch their parent's pid and exit
    after it. Linux only: elsewhere the command runs unwrapped.
    """
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-c", _PARENT_DEATH_WRAPPER, str(os.getpid()), *command]


def _executable(name: str) -> str:
    """Return the path of a console script installed next to this interpreter."""
    candidate = Path(sys.executable).parent / name
    if not candidate.exists():
        raise DeploymentError(
            f"{name} not found next to {sys.executable}; install flwr 1.42 into "
            "this environment (`make install`)"
        )
    return str(candidate)


def _check_node_config_path(hospital_id: str, path: Path) -> None:
    """Reject paths that would break the quoting of `--node-config`."""
    if any(character in str(path) for character in '"\\\n'):
        raise ValueError(
            f"agent_configs[{hospital_id!r}]: path {str(path)!r} contains a quote, "
            "backslash or newline, which --node-config cannot carry; move the file"
        )


def _toml_value(value: RunConfigValue) -> str:
    """Format a run config value as a TOML literal for `--run-config`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def _free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    NOTE: another process can take the port between this check and the bind
    by Flower; start-up then fails with an address-in-use error in the log.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _signal_group(process_group: int, signal_number: signal.Signals) -> None:
    try:
        os.killpg(process_group, signal_number)
    except ProcessLookupError:
        pass


def _kill_marked_processes(deployment_id: str) -> None:
    """SIGKILL every process whose environment carries this deployment's marker.

    Flower starts some children in new sessions (the SuperLink's
    flower-superexec, for example), out of reach of the process-group signal.
    The scan repeats until no marked process is left, because a process can
    fork between two scans and a killed one stays visible until it has exited.
    Reads /proc, so it covers Linux only.
    """
    deadline = time.monotonic() + _STOP_GRACE_SECONDS
    while True:
        pids = _marked_processes(deployment_id)
        if not pids:
            return
        if time.monotonic() > deadline:
            logger.warning(
                "processes %s of deployment %s still exist after SIGKILL",
                pids,
                deployment_id,
            )
            return
        for pid in pids:
            logger.info("ending leftover process %d of the deployment", pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _marked_processes(deployment_id: str) -> list[int]:
    """Return the pids, other than this process, that carry the deployment marker.

    A zombie has no readable environment, so exited processes are not listed.
    """
    marker = f"{DEPLOYMENT_MARKER_VARIABLE}={deployment_id}".encode() + b"\0"
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in environment:
            pids.append(int(entry.name))
    return pids
