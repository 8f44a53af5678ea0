// Polling for running tasks: every second while the tab is visible, backing off while it is hidden or failing,
// and polling again at once when the tab comes back (docs/console.md#tasks-and-their-progress).

import { useEffect, useRef, useState } from "./vendor/preact-htm.js";

export const VISIBLE_INTERVAL_MS = 1000;
export const MAX_INTERVAL_MS = 60000;

/**
 * The wait before the next poll. `previousMs` is the last wait (0 before the first), `hidden` whether the tab is
 * hidden, `failures` how many polls in a row failed. Visible and healthy: one second. Hidden or failing: double
 * the last wait, up to a minute.
 */
export function nextDelayMs({ previousMs, hidden, failures }) {
  if (!hidden && failures === 0) return VISIBLE_INTERVAL_MS;
  return Math.min(MAX_INTERVAL_MS, Math.max(VISIBLE_INTERVAL_MS, previousMs) * 2);
}

/**
 * Run `poll()` (async; resolves true while there is still something to follow) on the schedule above while
 * `active` is true. Returns the error of the last poll if it failed (null once one succeeds), for the caller to
 * show: polling goes on, slower, but never fails silently.
 */
export function usePolling(poll, active) {
  const latest = useRef(poll);
  latest.current = poll;
  const [error, setError] = useState(null);
  useEffect(() => {
    if (!active) return undefined;
    let timer = 0;
    let delayMs = 0;
    let failures = 0;
    let stopped = false;
    const schedule = () => {
      delayMs = nextDelayMs({ previousMs: delayMs, hidden: document.hidden, failures });
      timer = setTimeout(run, delayMs);
    };
    const run = async () => {
      timer = 0;
      let more = true;
      try {
        more = await latest.current();
        failures = 0;
        setError(null);
      } catch (failure) {
        failures += 1;
        setError(failure);
      }
      if (!stopped && more !== false) schedule();
    };
    const onVisibility = () => {
      if (!document.hidden && timer) {
        clearTimeout(timer);
        delayMs = 0;
        run();
      }
    };
    document.addEventListener("visibilitychange", onVisibility);
    schedule();
    return () => {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    };
  }, [active]);
  return error;
}
