// The signed-in key pair lives in this tab's sessionStorage only: never localStorage, never a cookie, and it
// leaves the browser only as a signature (docs/console.md#signing-in).

const KEY = "fleetops.console.credentials";

export function loadCredentials() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(KEY) || "null");
    return saved && typeof saved.secretId === "string" && typeof saved.secretKey === "string" ? saved : null;
  } catch {
    return null;
  }
}

export function saveCredentials(credentials) {
  sessionStorage.setItem(KEY, JSON.stringify({ secretId: credentials.secretId, secretKey: credentials.secretKey }));
}

export function clearCredentials() {
  sessionStorage.removeItem(KEY);
}

// DescribeTask does not return the DeviceNameFilter; the console remembers the filters of the tasks created from
// this tab so that its task list can show them.
const FILTERS = "fleetops.console.task-filters";

export function rememberTaskFilter(taskId, filter) {
  const filters = taskFilters();
  filters[taskId] = filter;
  sessionStorage.setItem(FILTERS, JSON.stringify(filters));
}

export function taskFilters() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(FILTERS) || "{}");
    return saved && typeof saved === "object" ? saved : {};
  } catch {
    return {};
  }
}
