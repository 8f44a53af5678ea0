// Pure helpers for the shadow view: reading DescribeDeviceShadow's Data and turning an edited desired document
// into the merge patch UpdateDeviceShadow applies (RFC 7396, docs/api.md#updatedeviceshadow).

/** The parts of a DescribeDeviceShadow `Data` string the console shows. */
export function parseShadowData(data) {
  const document = JSON.parse(data);
  const payload = document.payload || {};
  const state = payload.state || {};
  return {
    reported: state.reported || {},
    desired: state.desired === undefined ? null : state.desired,
    delta: state.delta === undefined ? null : state.delta,
    metadata: payload.metadata || {},
    version: payload.version,
    timestampMs: payload.timestamp,
  };
}

export function isJsonObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

export function jsonEqual(a, b) {
  if (Array.isArray(a) || Array.isArray(b)) {
    return Array.isArray(a) && Array.isArray(b) && a.length === b.length && a.every((x, i) => jsonEqual(x, b[i]));
  }
  if (isJsonObject(a) && isJsonObject(b)) {
    const keys = Object.keys(a);
    return keys.length === Object.keys(b).length && keys.every((k) => k in b && jsonEqual(a[k], b[k]));
  }
  return a === b;
}

/**
 * The smallest merge patch turning `before` (the desired section shown, or null) into `after` (the edited one):
 * removed keys become null, unchanged keys are left out, objects are diffed key by key, arrays replaced whole.
 * The shadow merges desired (null deletes a key), so sending the edited document as it is would never remove
 * the keys the operator deleted.
 */
export function desiredPatch(before, after) {
  const old = isJsonObject(before) ? before : {};
  const patch = {};
  for (const key of Object.keys(old)) {
    if (!(key in after)) patch[key] = null;
  }
  for (const [key, value] of Object.entries(after)) {
    const previous = old[key];
    if (isJsonObject(value) && isJsonObject(previous)) {
      const inner = desiredPatch(previous, value);
      if (Object.keys(inner).length > 0) patch[key] = inner;
    } else if (!(key in old) || !jsonEqual(previous, value)) {
      patch[key] = value;
    }
  }
  return patch;
}
