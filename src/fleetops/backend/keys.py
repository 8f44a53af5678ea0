"""API keys as the protocol layer sees them: the SecretId of a request resolved to its account and key."""

from __future__ import annotations

from fleetops.ports.store import AccountStore, ApiKey


class KeyService:
    def __init__(self, accounts: AccountStore) -> None:
        self._accounts = accounts

    async def resolve(self, secret_id: str) -> ApiKey | None:
        """The enabled key with this SecretId, or None (unknown or disabled: the caller cannot tell apart)."""
        key = await self._accounts.get_key(secret_id)
        return key if key is not None and key.enabled else None
