"""Which key pair a command signs with: the options, else the environment, else the data directory's file.

The same order as tccli (flags, then environment, then its configuration file). The file is the
``credentials.json`` that the first ``fleetops serve`` writes (mode 0600), so on the node's own machine the
commands work with no option at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final

from fleetops.client.api import ClientSetupError, Credentials
from fleetops.credentials import CREDENTIALS_FILE, read_credentials

SECRET_ID_ENV: Final = "FLEETOPS_SECRET_ID"
SECRET_KEY_ENV: Final = "FLEETOPS_SECRET_KEY"


def resolve_credentials(
    secret_id: str | None, secret_key: str | None, environ: Mapping[str, str], data_dir: Path
) -> Credentials:
    """The key pair to use; ClientSetupError saying where it looked when there is none.

    A pair is taken whole from one place: a SecretId from an option and a SecretKey from the environment would
    sign with a key that may not belong to that id, which the server could only report as a bad signature.
    """
    if secret_id or secret_key:
        if not (secret_id and secret_key):
            raise ClientSetupError("give both --secret-id and --secret-key (or neither)")
        return Credentials(secret_id, secret_key, "--secret-id/--secret-key")
    env_id, env_key = environ.get(SECRET_ID_ENV, ""), environ.get(SECRET_KEY_ENV, "")
    if env_id or env_key:
        if not (env_id and env_key):
            missing = SECRET_KEY_ENV if env_id else SECRET_ID_ENV
            raise ClientSetupError(f"{missing} is not set: set both {SECRET_ID_ENV} and {SECRET_KEY_ENV} (or neither)")
        return Credentials(env_id, env_key, f"{SECRET_ID_ENV}/{SECRET_KEY_ENV}")
    path = data_dir / CREDENTIALS_FILE
    saved = read_credentials(path)
    if saved is not None:
        return Credentials(saved[0], saved[1], str(path.resolve()))
    state = "cannot be read as a key pair" if path.exists() else "does not exist"
    raise ClientSetupError(
        f"no credentials: give --secret-id and --secret-key, set {SECRET_ID_ENV} and {SECRET_KEY_ENV}, or point "
        f"--data-dir at the node's data directory ({path.resolve()} {state})"
    )
