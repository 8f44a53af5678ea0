"""What a verified request binds in the signature ledger (docs/protocol.md#replay): a TC3 signature to the
Action, Version and Region it is presented with, a v1 request's Nonce to its SecretId; each until the request's
timestamp leaves the clock-skew window."""

from __future__ import annotations

from fleetops.api.request import ParsedRequest
from fleetops.backend.signatures import SignatureGuard
from fleetops.ports.signatures import Binding


async def refuse_replay(guard: SignatureGuard, parsed: ParsedRequest, client: str, *, skew_s: int) -> None:
    """Raise ``AuthFailure.SignatureFailure`` for a signature already seen with another binding, or a repeated
    v1 Nonce. Call it once the signature is verified: an unverified signature must not take a key.
    ``client`` is the address the request came from (``RawRequest.client``)."""
    binding = Binding(parsed.action, parsed.version, parsed.region or "", client)
    expires_at = parsed.timestamp + skew_s
    if parsed.tc3 is not None:
        await guard.bind_tc3(parsed.signature, binding, expires_at)
    else:
        assert parsed.nonce is not None  # every v1 request has one (parse_request)
        await guard.claim_nonce(parsed.secret_id, parsed.nonce, binding, expires_at)
