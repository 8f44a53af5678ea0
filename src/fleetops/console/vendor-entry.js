// The one vendored file of the console (static/vendor/preact-htm.js), rebuilt by `make console`: Preact, its
// hooks and htm in a single ES module, so the browser needs no import map (an inline script the CSP forbids).
import htm from "htm";
import { h } from "preact";

export { Fragment, h, render } from "preact";
export { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";

/** Tagged templates instead of JSX: no compile step for the console's own modules. */
export const html = htm.bind(h);
