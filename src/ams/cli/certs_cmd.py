"""ams certs: the password encryption certificates of each scope (agent, d-...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ams.cli._common import (
    HomeOption,
    JsonOption,
    PasswordStdinOption,
    actor,
    console,
    emit_json,
    opened,
    print_table,
    read_secret,
)

app = typer.Typer(
    help="Password encryption certificates: list, new, export, import, lost.", no_args_is_help=True
)

ScopeOption = Annotated[str, typer.Option("--scope", help="agent, or a directory id (d- and 10 hex digits).")]
ThumbprintArg = Annotated[
    str, typer.Argument(help="The certificate's thumbprint (or its first 8+ hex digits).", show_default=False)
]
ActivateOption = Annotated[bool, typer.Option("--activate", help="Make it the scope's active certificate.")]


def _short(thumbprint: str) -> str:
    return thumbprint[:16]


@app.command("list")
def list_(
    scope: Annotated[str | None, typer.Option("--scope", help="Only this scope.")] = None,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """List certificates (expired and lost ones too) with how many passwords each protects."""
    from ams.vault import certificates

    with opened(home) as instance:
        infos = certificates.list_certificates(instance, scope)
        now = instance.clock.now()
    if json_out:
        emit_json([i.to_dict() for i in infos])
        return
    # The first 16 hex digits are shown: every command accepts a unique prefix of 8 or more.
    rows = []
    for i in infos:
        not_after = i.not_after.strftime("%Y-%m-%d")
        rows.append(
            [
                _short(i.thumbprint),
                i.scope,
                i.state,
                "yes" if i.has_private_key else "lost",
                f"{not_after} expired" if i.expired(now) else not_after,
                str(i.current_passwords),
                str(i.history_passwords),
            ]
        )
    print_table(
        ["thumbprint", "scope", "state", "key", "not after", "current", "history"],
        rows,
        ids=("thumbprint", "scope"),
    )


@app.command("new")
def new(
    scope: ScopeOption,
    activate: ActivateOption = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Generate a certificate (RSA-4096, 20 years) for a scope; active if asked or if the
    scope has none."""
    from ams.vault import certificates

    certificates.check_scope(scope)
    with opened(home) as instance:
        info = certificates.create(instance, scope, actor(), activate=activate)
    if json_out:
        emit_json(info.to_dict())
        return
    console.print(f"Created certificate {info.thumbprint} for scope {info.scope} ({info.state}).")


@app.command("activate")
def activate(thumbprint: ThumbprintArg, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Make a certificate the active one of its scope; devices encrypt to it from their next rotation."""
    from ams.vault import certificates

    with opened(home) as instance:
        info = certificates.activate(instance, thumbprint, actor())
    if json_out:
        emit_json(info.to_dict())
        return
    console.print(f"Certificate {info.thumbprint} is now the active one of scope {info.scope}.")


@app.command("export")
def export(
    thumbprint: ThumbprintArg,
    out: Annotated[Path, typer.Option("--out", help="The PFX file to write (0600).", show_default=False)],
    password_stdin: PasswordStdinOption = False,
    compat: Annotated[
        bool, typer.Option("--compat", help="3DES and a SHA-1 MAC, for old Windows that cannot read AES.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace --out if it exists.")] = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Export a certificate with its private key to a password-protected PFX file.

    The default is PBES2 (AES-256-CBC, PBKDF2-SHA256, 600,000 rounds) with a SHA-256 MAC.
    """
    from ams.vault import certificates

    with opened(home) as instance:
        # Everything that can be refused is refused before the password is asked for.
        info = certificates.check_export(instance, thumbprint, out, force=force)
        password = read_secret("PFX password", from_stdin=password_stdin, confirm=True)
        certificates.export_to_file(
            instance, info.thumbprint, out, password, actor(), compat=compat, force=force
        )
    if json_out:
        emit_json({**info.to_dict(), "file": str(out), "compat": compat})
        return
    console.print(f"Exported certificate {info.thumbprint} with its private key to {out}.")
    console.print("Keep the file and its password apart: together they read every password under this key.")


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="The PFX (.pfx/.p12) file.", show_default=False)],
    scope: ScopeOption,
    activate: ActivateOption = False,
    password_stdin: PasswordStdinOption = False,
    home: HomeOption = None,
    json_out: JsonOption = False,
) -> None:
    """Import a certificate with its private key from a PFX file (OpenSSL, -legacy, Windows).

    Importing the PFX of a lost certificate restores its key: its passwords read again.
    """
    from ams.crypto.certs import MAX_PFX_BYTES
    from ams.paths import read_file
    from ams.vault import certificates

    certificates.check_scope(scope)
    # import_pfx refuses anything larger than MAX_PFX_BYTES.
    data = read_file(file, "a .pfx file", limit=MAX_PFX_BYTES + 1)
    with opened(home) as instance:
        instance.keyring.box  # noqa: B018 - locked? say so before asking for the password
        # A PFX may have no password (empty): import takes it; export always demands one.
        password = read_secret("PFX password", from_stdin=password_stdin, allow_empty=True)
        result = certificates.import_pfx(instance, data, password, scope, actor(), activate=activate)
    info = result.certificate
    if json_out:
        emit_json(result.to_dict())
        return
    if result.restored:
        console.print(
            f"Restored the private key of lost certificate {info.thumbprint}: "
            f"its {info.current_passwords + info.history_passwords} password(s) read again ({info.state})."
        )
    else:
        console.print(f"Imported certificate {info.thumbprint} into scope {info.scope} ({info.state}).")


@app.command("lost")
def lost(thumbprint: ThumbprintArg, home: HomeOption = None, json_out: JsonOption = False) -> None:
    """Declare a certificate's private key lost: its passwords become unrecoverable, a new
    active certificate is published, and devices under it rotate at their next check-in."""
    from ams.vault import certificates

    with opened(home) as instance:
        result = certificates.lost(instance, thumbprint, actor())
    if json_out:
        emit_json(result.to_dict())
        return
    info = result.certificate
    console.print(f"Certificate {info.thumbprint} is marked lost; its private key was removed.")
    if result.replacement is not None:
        console.print(f"New active certificate of scope {info.scope}: {result.replacement.thumbprint}.")
    console.print(
        f"{result.expired_passwords} device password(s) expired: each device rotates at its next check-in. "
        f"{info.history_passwords} history password(s) under it are unrecoverable "
        "unless its PFX is imported again."
    )
