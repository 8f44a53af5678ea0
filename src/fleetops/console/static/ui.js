// Shared pieces of the console's views: error notices, pagers, time and JSON formatting, API-backed state.

import { ApiError, NetworkError } from "./api.js";
import { html, useCallback, useEffect, useRef, useState } from "./vendor/preact-htm.js";

// What each code needs from the operator beyond the API's own message.
const HINTS = {
  "AuthFailure.SignatureExpire":
    "This computer's clock is more than 5 minutes away from the server's: set it right (NTP) and sign in again.",
  "AuthFailure.SignatureFailure": "Check the SecretKey: it does not match this SecretId.",
  "AuthFailure.SecretIdNotFound": "Check the SecretId, or ask for an enabled key (fleetops keys list).",
  "FailedOperation.UpdateVersionNotMatch":
    "The shadow changed since it was shown and has been reloaded: make your edit again on the current document.",
  "RequestLimitExceeded": "Too many requests for this key: wait a moment and retry.",
};

/** An error as the operator needs it: an API error's Code and Message, or what went wrong on the way. */
export function ErrorNotice({ error }) {
  if (!error) return null;
  if (error instanceof ApiError) {
    const hint = HINTS[error.code];
    return html`<div class="notice error" role="alert">
      <p><strong class="code">${error.code}</strong> <span class="message">${error.message}</span></p>
      ${hint && html`<p class="hint">${hint}</p>`}
      <p class="request-id">RequestId ${error.requestId}</p>
    </div>`;
  }
  if (error instanceof NetworkError) {
    return html`<div class="notice error" role="alert"><p class="message">${error.message}</p></div>`;
  }
  return html`<div class="notice error" role="alert">
    <p class="message">Unexpected error in the console: ${String(error && error.message ? error.message : error)}</p>
  </div>`;
}

/** A short confirmation, read out by screen readers. */
export function Success({ text }) {
  return text ? html`<div class="notice success" role="status">${text}</div>` : null;
}

/**
 * State loaded from the API: `load()` (async) runs when `deps` change and on `reload()`; `data` keeps the last
 * good answer while a reload runs, `error` the last failure. A late answer of an older load is dropped.
 */
export function useLoad(load, deps) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const generation = useRef(0);
  const run = useCallback(async () => {
    const mine = ++generation.current;
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await load();
      if (mine === generation.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (mine === generation.current) setState((s) => ({ data: s.data, error, loading: false }));
    }
  }, deps);
  useEffect(() => {
    run();
  }, [run]);
  return { ...state, reload: run, setData: (data) => setState((s) => ({ ...s, data })) };
}

/** Previous / next over an Offset+Limit listing with a TotalCount. */
export function Pager({ offset, limit, total, onOffset, label }) {
  if (!total) return null;
  const last = Math.min(offset + limit, total);
  return html`<nav class="pager" aria-label=${`${label} pages`}>
    <button type="button" disabled=${offset === 0} onClick=${() => onOffset(Math.max(0, offset - limit))}>
      Previous
    </button>
    <span aria-live="polite">${offset + 1}–${last} of ${total}</span>
    <button type="button" disabled=${last >= total} onClick=${() => onOffset(offset + limit)}>Next</button>
  </nav>`;
}

/** Unix seconds as local date and time; 0 (never) as `zero`. */
export function formatTime(seconds, zero = "—") {
  if (!seconds) return zero;
  const date = new Date(seconds * 1000);
  return html`<time datetime=${date.toISOString()}>${date.toLocaleString()}</time>`;
}

export function Json({ value, label }) {
  return html`<pre class="json" aria-label=${label} tabindex="0">${JSON.stringify(value, null, 2)}</pre>`;
}

export function Loading({ when }) {
  return when ? html`<p class="loading" role="status">Loading…</p>` : null;
}

export function href(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(p)).join("/");
}
