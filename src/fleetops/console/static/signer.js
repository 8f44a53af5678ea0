// TC3-HMAC-SHA256, computed in the browser with WebCrypto exactly as the official SDK computes it
// (docs/console.md#how-it-talks-to-fleetops): a POST to "/" with an empty query, signing the headers content-type and host.
// Pure apart from crypto.subtle, so the same module runs in Chromium and in Node (tests/e2e/test_console_signer.py).

const ALGORITHM = "TC3-HMAC-SHA256";
const SIGNED_HEADERS = "content-type;host";
const encoder = new TextEncoder();

/** Whether this page may use WebCrypto: only secure contexts (HTTPS, or http://localhost / 127.0.0.1) may. */
export function signingAvailable() {
  return Boolean(globalThis.crypto && globalThis.crypto.subtle);
}

function toHex(buffer) {
  return Array.from(new Uint8Array(buffer), (byte) => byte.toString(16).padStart(2, "0")).join("");
}

async function sha256Hex(text) {
  return toHex(await crypto.subtle.digest("SHA-256", encoder.encode(text)));
}

async function hmacSha256(keyBytes, text) {
  const key = await crypto.subtle.importKey("raw", keyBytes, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(text)));
}

/** The credential-scope date: YYYY-MM-DD of the Unix timestamp (seconds) in UTC. */
export function utcDate(timestampS) {
  return new Date(timestampS * 1000).toISOString().slice(0, 10);
}

/**
 * Sign one POST request. `body` is the exact text sent (hashed as UTF-8), `host` the Host header the browser
 * sends (location.host), `timestampS` the X-TC-Timestamp value. Returns the Authorization header value and the
 * intermediate strings (for tests and for debugging a SignatureFailure).
 */
export async function tc3Sign({
  secretId,
  secretKey,
  host,
  contentType,
  timestampS,
  body,
  service = "iotcloud",
  action = undefined,
}) {
  const date = utcDate(timestampS);
  // With `action`, X-TC-Action is signed too (the SDK does not): two actions with the same body signed in the
  // same second then have different signatures, which the server's replay check needs (docs/protocol.md#replay).
  const signedHeaders = action === undefined ? SIGNED_HEADERS : `${SIGNED_HEADERS};x-tc-action`;
  const actionHeader = action === undefined ? "" : `x-tc-action:${action}\n`;
  // CanonicalHeaders ends with "\n" and is then joined with "\n": the empty line is part of the format.
  const canonicalRequest = [
    "POST",
    "/",
    "",
    `content-type:${contentType}\nhost:${host}\n${actionHeader}`,
    signedHeaders,
    await sha256Hex(body),
  ].join("\n");
  const scope = `${date}/${service}/tc3_request`;
  const stringToSign = [ALGORITHM, String(timestampS), scope, await sha256Hex(canonicalRequest)].join("\n");
  const kDate = await hmacSha256(encoder.encode(`TC3${secretKey}`), date);
  const kService = await hmacSha256(kDate, service);
  const kSigning = await hmacSha256(kService, "tc3_request");
  const signature = toHex(await hmacSha256(kSigning, stringToSign));
  const authorization = `${ALGORITHM} Credential=${secretId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`;
  return { authorization, canonicalRequest, stringToSign, signature };
}
