"""Tests of `federation-hub init`: certificates, keys, roster and file safety."""

from __future__ import annotations

import base64
import ipaddress
import stat
from pathlib import Path

import pytest
import typer
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.verification import (
    PolicyBuilder,
    ServerVerifier,
    Store,
    VerificationError,
)
from flwr.supercore.primitives.asymmetric import uses_nist_ec_curve
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from federation_hub.credentials import (
    CredentialsExistError,
    FederationCredentials,
    InvalidCredentialsError,
    create_federation_credentials,
    federation_paths,
    load_federation_credentials,
    validate_hospital_ids,
)
from federation_hub.init_command import init

HOSPITALS = ["cleveland", "hungary", "switzerland", "va-long-beach"]


@pytest.fixture(scope="module")
def credentials(tmp_path_factory: pytest.TempPathFactory) -> FederationCredentials:
    directory = tmp_path_factory.mktemp("credentials")
    return create_federation_credentials(
        directory, HOSPITALS, ["hub.example.org", "10.1.2.3"]
    )


def _all_files(credentials: FederationCredentials) -> list[Path]:
    return sorted(p for p in credentials.directory.rglob("*") if p.is_file())


def _private_files(credentials: FederationCredentials) -> list[Path]:
    files = [
        credentials.ca_key,
        credentials.superlink_key,
        credentials.hub_identity_key,
    ]
    for hospital in credentials.hospitals:
        files += [hospital.identity_key, hospital.supernode_key]
    return files


def _verifier(
    credentials: FederationCredentials, name: x509.GeneralName
) -> ServerVerifier:
    ca = x509.load_pem_x509_certificate(credentials.ca_certificate.read_bytes())
    builder = PolicyBuilder().store(Store([ca]))
    return builder.build_server_verifier(name)


def _server_certificate(credentials: FederationCredentials) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        credentials.superlink_certificate.read_bytes()
    )


def test_init_private_keys_mode_0600(credentials: FederationCredentials) -> None:
    for path in _private_files(credentials):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_init_public_files_readable(credentials: FederationCredentials) -> None:
    for path in set(_all_files(credentials)) - set(_private_files(credentials)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_init_writes_no_temporary_files(credentials: FederationCredentials) -> None:
    leftovers = [p for p in _all_files(credentials) if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize(
    "name",
    [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.DNSName("localhost"),
        x509.DNSName("hub.example.org"),
        x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
    ],
)
def test_server_certificate_verifies_for_name(
    credentials: FederationCredentials, name: x509.GeneralName
) -> None:
    verifier = _verifier(credentials, name)
    chain = verifier.verify(_server_certificate(credentials), [])
    assert len(chain) == 2


def test_server_certificate_rejects_other_name(
    credentials: FederationCredentials,
) -> None:
    verifier = _verifier(credentials, x509.DNSName("other.example.org"))
    with pytest.raises(VerificationError):
        verifier.verify(_server_certificate(credentials), [])


def test_server_certificate_rejected_by_other_ca(
    credentials: FederationCredentials, tmp_path: Path
) -> None:
    other = create_federation_credentials(tmp_path, ["cleveland"])
    verifier = _verifier(other, x509.DNSName("localhost"))
    with pytest.raises(VerificationError):
        verifier.verify(_server_certificate(credentials), [])


def test_ca_certificate_is_ca(credentials: FederationCredentials) -> None:
    ca = x509.load_pem_x509_certificate(credentials.ca_certificate.read_bytes())
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is True
    assert constraints.path_length == 0


def test_supernode_key_loads_as_flower_does(credentials: FederationCredentials) -> None:
    # flower-supernode 1.42 reads --auth-supernode-private-key with
    # load_ssh_private_key and requires an EC key; `flwr supernode register`
    # requires an OpenSSH public key on a NIST curve.
    for hospital in credentials.hospitals:
        private_key = serialization.load_ssh_private_key(
            hospital.supernode_key.read_bytes(), None
        )
        public_key = serialization.load_ssh_public_key(
            hospital.supernode_public_key.read_bytes()
        )
        assert isinstance(private_key, ec.EllipticCurvePrivateKey)
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        assert uses_nist_ec_curve(public_key)
        assert private_key.public_key() == public_key


def test_supernode_keys_distinct(credentials: FederationCredentials) -> None:
    keys = {h.supernode_public_key.read_bytes() for h in credentials.hospitals}
    assert len(keys) == len(HOSPITALS)


def test_roster_lists_identity_keys(credentials: FederationCredentials) -> None:
    roster = yaml.safe_load(credentials.roster.read_text(encoding="utf-8"))
    assert roster["federation"] == "healthfed"
    assert sorted(roster["hospitals"]) == sorted(HOSPITALS)
    for hospital in credentials.hospitals:
        public_key = serialization.load_pem_public_key(
            hospital.identity_public_key.read_bytes()
        )
        assert isinstance(public_key, ed25519.Ed25519PublicKey)
        raw = public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert roster["hospitals"][hospital.hospital_id] == base64.b64encode(
            raw
        ).decode("ascii")


def test_roster_hub_key_matches_file(credentials: FederationCredentials) -> None:
    roster = yaml.safe_load(credentials.roster.read_text(encoding="utf-8"))
    private_key = serialization.load_pem_private_key(
        credentials.hub_identity_key.read_bytes(), None
    )
    assert isinstance(private_key, ed25519.Ed25519PrivateKey)
    raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert roster["hub"] == base64.b64encode(raw).decode("ascii")


def test_identity_key_signs_for_roster(credentials: FederationCredentials) -> None:
    hospital = credentials.hospital("cleveland")
    private_key = serialization.load_pem_private_key(
        hospital.identity_key.read_bytes(), None
    )
    assert isinstance(private_key, ed25519.Ed25519PrivateKey)
    roster = yaml.safe_load(credentials.roster.read_text(encoding="utf-8"))
    public_key = ed25519.Ed25519PublicKey.from_public_bytes(
        base64.b64decode(roster["hospitals"]["cleveland"])
    )
    public_key.verify(private_key.sign(b"study round 1"), b"study round 1")


def test_roster_loads_with_policies_roster(credentials: FederationCredentials) -> None:
    roster_module = pytest.importorskip("policies.roster")
    roster = roster_module.load_roster(credentials.roster)
    assert sorted(roster.hospitals) == sorted(HOSPITALS)


def test_load_credentials_round_trip(credentials: FederationCredentials) -> None:
    loaded = load_federation_credentials(credentials.directory)
    assert loaded == credentials


def test_load_credentials_missing_file(tmp_path: Path) -> None:
    created = create_federation_credentials(tmp_path, ["cleveland"])
    created.hospital("cleveland").supernode_key.unlink()
    with pytest.raises(InvalidCredentialsError, match="supernode.key"):
        load_federation_credentials(tmp_path)


def test_load_credentials_missing_roster(tmp_path: Path) -> None:
    with pytest.raises(InvalidCredentialsError, match="roster"):
        load_federation_credentials(tmp_path)


def test_init_existing_files_not_overwritten(tmp_path: Path) -> None:
    created = create_federation_credentials(tmp_path, ["cleveland"])
    before = {p: p.read_bytes() for p in _all_files(created)}
    with pytest.raises(CredentialsExistError, match="--force"):
        create_federation_credentials(tmp_path, ["cleveland", "hungary"])
    after = {p: p.read_bytes() for p in _all_files(created)}
    assert after == before


def test_init_one_existing_file_blocks_all(tmp_path: Path) -> None:
    paths = federation_paths(tmp_path, ["cleveland"])
    paths.roster.parent.mkdir(parents=True, exist_ok=True)
    paths.roster.write_text("kept\n", encoding="utf-8")
    with pytest.raises(CredentialsExistError):
        create_federation_credentials(tmp_path, ["cleveland"])
    assert paths.roster.read_text(encoding="utf-8") == "kept\n"
    assert not paths.ca_key.exists()


def test_init_force_replaces_keys(tmp_path: Path) -> None:
    first = create_federation_credentials(tmp_path, ["cleveland"])
    old_key = first.hospital("cleveland").supernode_key.read_bytes()
    second = create_federation_credentials(tmp_path, ["cleveland"], force=True)
    assert second.hospital("cleveland").supernode_key.read_bytes() != old_key
    mode = stat.S_IMODE(second.hospital("cleveland").supernode_key.stat().st_mode)
    assert mode == 0o600


@pytest.mark.parametrize(
    "hospital_ids",
    [[], ["Cleveland"], ["../etc"], ["a/b"], ["-x"], ["x-"], ["a" * 65], ["a", "a"]],
)
def test_init_invalid_hospital_ids(tmp_path: Path, hospital_ids: list[str]) -> None:
    with pytest.raises(InvalidCredentialsError, match="hospital"):
        create_federation_credentials(tmp_path, hospital_ids)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("hostname", ["", "bad host", "a..b", "-x.org", "x_y.org"])
def test_init_invalid_hostname(tmp_path: Path, hostname: str) -> None:
    with pytest.raises(InvalidCredentialsError, match="hostname"):
        create_federation_credentials(tmp_path, ["cleveland"], [hostname])
    assert list(tmp_path.iterdir()) == []


def test_init_invalid_federation(tmp_path: Path) -> None:
    with pytest.raises(InvalidCredentialsError, match="federation"):
        create_federation_credentials(tmp_path, ["cleveland"], federation="A B")


def test_init_invalid_validity(tmp_path: Path) -> None:
    with pytest.raises(InvalidCredentialsError, match="validity_days"):
        create_federation_credentials(tmp_path, ["cleveland"], validity_days=0)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=70))
def test_accepted_hospital_id_is_one_path_part(hospital_id: str) -> None:
    try:
        validate_hospital_ids([hospital_id])
    except InvalidCredentialsError:
        return
    assert Path(hospital_id).name == hospital_id
    assert hospital_id not in {".", ".."}
    assert '"' not in hospital_id


def _cli() -> typer.Typer:
    application = typer.Typer()
    application.command()(init)
    return application


def test_cli_init_creates_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _cli(), [str(tmp_path), "--hospital", "cleveland", "--hospital", "hungary"]
    )
    assert result.exit_code == 0, result.output
    loaded = load_federation_credentials(tmp_path)
    assert [h.hospital_id for h in loaded.hospitals] == ["cleveland", "hungary"]


def test_cli_init_refuses_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(_cli(), [str(tmp_path), "--hospital", "cleveland"])
    result = runner.invoke(_cli(), [str(tmp_path), "--hospital", "cleveland"])
    assert result.exit_code == 2
    assert "--force" in result.output


def test_hub_cli_registers_init(tmp_path: Path) -> None:
    from federation_hub.cli import app as hub_cli

    result = CliRunner().invoke(
        hub_cli, ["init", str(tmp_path), "--hospital", "cleveland"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "roster.yaml").is_file()


def test_cli_init_force_overwrites(tmp_path: Path) -> None:
    runner = CliRunner()
    runner.invoke(_cli(), [str(tmp_path), "--hospital", "cleveland"])
    result = runner.invoke(
        _cli(), [str(tmp_path), "--hospital", "cleveland", "--force"]
    )
    assert result.exit_code == 0, result.output
