"""`maild dkim keygen`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from maild.cli.main import new_app, settings_from
from maild.errors import UserError

app = new_app("DKIM keys for outgoing mail.")


def txt_record(public_pem: bytes) -> str:
    body = b"".join(line for line in public_pem.splitlines() if not line.startswith(b"-----")).decode()
    return f"v=DKIM1; k=rsa; p={body}"


@app.command()
def keygen(
    ctx: typer.Context,
    selector: Annotated[str, typer.Option(help="DKIM selector, e.g. maild2026")],
    out: Annotated[Path | None, typer.Option("--out", help="where to write the key (default outbound.dkim_key_file)")] = None,
    bits: Annotated[int, typer.Option(help="RSA key size")] = 2048,
    force: Annotated[bool, typer.Option(help="overwrite an existing key file")] = False,
) -> None:
    """Write a new RSA private key (PEM) and print the DNS TXT record to publish."""
    settings = settings_from(ctx, need_secret=False)
    if not selector or not all(c.isalnum() or c in "-_" for c in selector):
        raise UserError(f"--selector {selector!r}: letters, digits, - and _ only")
    path = out or (settings.path(settings.outbound.dkim_key_file) if settings.outbound.dkim_key_file else None)
    if path is None:
        raise UserError("no --out PATH and no outbound.dkim_key_file in the config")
    if path.exists() and not force:
        raise UserError(f"{path} exists: pass --force to replace it")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    typer.echo(f"wrote {path}")
    typer.echo(f"publish this TXT record at {selector}._domainkey.{settings.mail.domain}:")
    typer.echo(txt_record(public))
