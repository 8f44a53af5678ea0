// The console's only way to the server: ordinary signed Tencent Cloud API 3.0 calls (POST JSON to "/"), the same
// requests the official SDK sends, so the console has no privileged path (docs/console.md#how-it-talks-to-fleetops).

import { tc3Sign } from "./signer.js";

export const API_VERSION = "2018-06-14";
const CONTENT_TYPE = "application/json";
// The region is ignored by iotcloud 2018-06-14; the SDK sends one when configured, so the console does too.
const REGION = "ap-guangzhou";
const TIMEOUT_MS = 30000;

/** An error the API answered: its Code and Message, shown as they are. */
export class ApiError extends Error {
  constructor(code, message, requestId) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.requestId = requestId;
  }
}

/** The API could not be reached, or answered something that is not an API envelope. */
export class NetworkError extends Error {
  constructor(message) {
    super(message);
    this.name = "NetworkError";
  }
}

/** The API endpoint: "/" of the origin that serves /console/ (a path prefix added by a proxy is kept). */
export function apiUrl() {
  return new URL("../", new URL(".", location.href));
}

/** A function `call(action, params)` that signs with the given key pair and resolves to the Response object. */
export function createClient({ secretId, secretKey }) {
  const url = apiUrl();
  return async function call(action, params = {}) {
    const body = JSON.stringify(params);
    const timestampS = Math.floor(Date.now() / 1000);
    const { authorization } = await tc3Sign({
      secretId,
      secretKey,
      host: url.host,
      contentType: CONTENT_TYPE,
      timestampS,
      body,
      action,
    });
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        headers: {
          "Content-Type": CONTENT_TYPE,
          "X-TC-Action": action,
          "X-TC-Version": API_VERSION,
          "X-TC-Timestamp": String(timestampS),
          "X-TC-Region": REGION,
          "X-TC-Language": "en-US",
          Authorization: authorization,
        },
        body,
        credentials: "omit",
        cache: "no-store",
        signal: AbortSignal.timeout(TIMEOUT_MS),
      });
    } catch (error) {
      const why = error.name === "TimeoutError" ? `no answer within ${TIMEOUT_MS / 1000} s` : error.message;
      throw new NetworkError(
        `Network error: cannot reach the fleetops API at ${url.origin} (${action}: ${why}). ` +
          "Check that the server is running and reachable, then retry.",
      );
    }
    if (response.status !== 200) {
      throw new NetworkError(
        `Network error: the API answered HTTP ${response.status} to ${action} instead of 200; ` +
          "a proxy in front of fleetops may be refusing the request.",
      );
    }
    let envelope;
    try {
      envelope = await response.json();
    } catch {
      throw new NetworkError(`Network error: the answer to ${action} is not JSON; is ${url.origin} a fleetops server?`);
    }
    const answer = envelope && envelope.Response;
    if (!answer || typeof answer !== "object") {
      throw new NetworkError(`Network error: the answer to ${action} has no Response object.`);
    }
    if (answer.Error) {
      throw new ApiError(answer.Error.Code, answer.Error.Message, answer.RequestId);
    }
    return answer;
  };
}
