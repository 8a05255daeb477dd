"""`federation-hub init`: create a federation's certificates, keys and roster."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from federation_hub.credentials import (
    DEFAULT_FEDERATION,
    DEFAULT_VALIDITY_DAYS,
    CredentialsExistError,
    InvalidCredentialsError,
    create_federation_credentials,
)

logger = logging.getLogger(__name__)


def init(
    directory: Annotated[
        Path,
        typer.Argument(help="Directory that receives the CA, certificates and keys."),
    ],
    hospital: Annotated[
        list[str],
        typer.Option(
            "--hospital",
            help="Hospital id to enroll (lowercase letters, digits, hyphens); "
            "repeat the option for each hospital.",
        ),
    ],
    hostname: Annotated[
        list[str] | None,
        typer.Option(
            "--hostname",
            help="Extra DNS name or IP address of the SuperLink for its TLS "
            "certificate; 127.0.0.1 and localhost are always included. Repeatable.",
        ),
    ] = None,
    federation: Annotated[
        str,
        typer.Option(
            "--federation",
            help="Federation name written to roster.yaml (lowercase letters, "
            "digits, hyphens).",
        ),
    ] = DEFAULT_FEDERATION,
    validity_days: Annotated[
        int,
        typer.Option(
            "--validity-days",
            min=1,
            max=3650,
            help="Validity of the CA and SuperLink certificates, in days.",
        ),
    ] = DEFAULT_VALIDITY_DAYS,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace existing files; every SuperNode must be registered again.",
        ),
    ] = False,
) -> None:
    """Create a private CA, the SuperLink TLS certificate, identity keys and roster.

    The hub and each hospital receive an Ed25519 identity key; each hospital
    also receives the EC P-384 key its SuperNode authenticates with. roster.yaml
    lists the identity public keys. Private keys are written with mode 0600, and
    no file is overwritten without --force.
    """
    try:
        paths = create_federation_credentials(
            directory,
            hospital,
            hostname or (),
            federation=federation,
            force=force,
            validity_days=validity_days,
        )
    except (CredentialsExistError, InvalidCredentialsError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=2) from err

    typer.echo(f"CA certificate (give to every hospital): {paths.ca_certificate}")
    typer.echo(
        f"SuperLink certificate and key: {paths.superlink_certificate}, "
        f"{paths.superlink_key}"
    )
    typer.echo(f"hub identity key: {paths.hub_identity_key}")
    typer.echo(f"roster (give to every hospital): {paths.roster}")
    for entry in paths.hospitals:
        typer.echo(
            f"hospital {entry.hospital_id}: {entry.identity_key.parent} (send to the "
            "hospital over a trusted channel, then delete the hub's copy of its "
            "private keys)"
        )
