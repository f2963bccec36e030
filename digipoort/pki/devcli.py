"""``digipoort dev pki-server`` and ``digipoort dev revoke``: the dev PKI's revocation."""

from __future__ import annotations

from pathlib import Path

import click

from digipoort.clikit import config_option, run_async, settings_from, until_signalled

__all__ = ["add_dev_commands"]


def _pki_dir(config_path: Path | None, pki_dir: Path | None) -> Path:
    if pki_dir is not None:
        return pki_dir
    settings = settings_from(config_path)
    return settings.resolve(settings.pki.ca_file).parent


@click.command("pki-server")
@config_option
@click.option("--pki-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The dev PKI (default: the directory of pki.ca_file).")  # fmt: skip
@click.option("--host", default=None, help="Default: pki.responder_host.")
@click.option("--port", type=int, default=None, help="Default: pki.responder_port.")
@click.option("--ocsp-validity", type=float, default=300.0, show_default=True,
              help="Seconds an OCSP answer is valid (its nextUpdate).")  # fmt: skip
def pki_server(
    config_path: Path | None,
    pki_dir: Path | None,
    host: str | None,
    port: int | None,
    ocsp_validity: float,
) -> None:
    """Serve the dev PKI's CRLs and OCSP (the URLs in its certificates) until stopped."""
    from digipoort.pki.responder import start_responder

    settings = settings_from(config_path)
    pki = settings.pki
    directory = pki_dir or settings.resolve(pki.ca_file).parent

    async def go() -> None:
        runner = await start_responder(
            directory, host or pki.responder_host, port or pki.responder_port,
            ocsp_validity=ocsp_validity,
        )  # fmt: skip
        click.echo(f"serving {directory} on http://{host or pki.responder_host}:"
                   f"{port or pki.responder_port} (CRLs /crl/, OCSP /ocsp/)")  # fmt: skip
        try:
            await until_signalled()
        finally:
            await runner.cleanup()

    run_async(go)


@click.command("revoke")
@config_option
@click.option("--pki-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The dev PKI (default: the directory of pki.ca_file).")  # fmt: skip
@click.argument("who")
def revoke_command(config_path: Path | None, pki_dir: Path | None, who: str) -> None:
    """Revoke the dev certificate WHO (an OIN, or e.g. server): re-issues ca.crl, which
    the pki-server serves and answers OCSP from at once."""
    from digipoort.pki.devpki import DevPkiLayout, revoke

    directory = _pki_dir(config_path, pki_dir)
    if "/" in who or not DevPkiLayout(directory).cert(who).exists():
        raise click.ClickException(f"no certificate {who}.crt in {directory}")
    try:
        serial = revoke(directory, who)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"revoked {who} (serial {serial:x}); {DevPkiLayout(directory).crl} re-issued")


def add_dev_commands(dev: click.Group) -> None:
    """Put pki-server and revoke into the ``dev`` group."""
    dev.add_command(pki_server)
    dev.add_command(revoke_command)
