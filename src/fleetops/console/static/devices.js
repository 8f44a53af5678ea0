// A product's devices (DescribeDevices: search by name and enable state) and one device's shadow, with the
// desired section editable under the shadow's version check.

import { ApiError } from "./api.js";
import { html, useState } from "./vendor/preact-htm.js";
import { desiredPatch, isJsonObject, parseShadowData } from "./shadow.js";
import { ErrorNotice, Json, Loading, Pager, Success, formatTime, href, useLoad } from "./ui.js";

const PAGE = 20; // DescribeDevices takes 10..250

export function DeviceList({ call, productId }) {
  const [query, setQuery] = useState({ name: "", enableState: "", offset: 0 });
  const [draft, setDraft] = useState({ name: "", enableState: "" });
  const { data, error, loading } = useLoad(() => {
    const params = { ProductId: productId, Offset: query.offset, Limit: PAGE };
    if (query.name) params.DeviceName = query.name;
    if (query.enableState !== "") params.EnableState = Number(query.enableState);
    return call("DescribeDevices", params);
  }, [productId, query]);
  const setDraftField = (name, value) => setDraft((d) => ({ ...d, [name]: value }));
  const search = (event) => {
    event.preventDefault();
    setQuery({ ...draft, offset: 0 });
  };
  return html`<section aria-labelledby="devices-title">
    <p class="crumbs"><a href="#/products">Products</a> / <code>${productId}</code></p>
    <h1 id="devices-title">Devices of ${productId}</h1>
    <form class="search" role="search" onSubmit=${search}>
      <label>Device name contains
        <input name="device-name" value=${draft.name} maxlength="48" autocomplete="off"
          onInput=${(e) => setDraftField("name", e.currentTarget.value)} />
      </label>
      <label>Enable state
        <select value=${draft.enableState} onChange=${(e) => setDraftField("enableState", e.currentTarget.value)}>
          <option value="">any</option>
          <option value="1">enabled</option>
          <option value="0">disabled</option>
        </select>
      </label>
      <button type="submit">Search</button>
    </form>
    <${ErrorNotice} error=${error} />
    <${Loading} when=${loading && !data} />
    ${data &&
    (data.Devices.length === 0
      ? html`<p role="status">No device matches.</p>`
      : html`<div class="table-wrap">
          <table>
            <caption class="visually-hidden">Devices of ${productId}</caption>
            <thead>
              <tr><th scope="col">Device</th><th scope="col">Online</th><th scope="col">Last login</th><th scope="col">Enable state</th></tr>
            </thead>
            <tbody>
              ${data.Devices.map(
                (d) => html`<tr key=${d.DeviceName}>
                  <td><a href=${href("products", productId, "devices", d.DeviceName)}>${d.DeviceName}</a></td>
                  <td><span class=${d.Online ? "badge ok" : "badge"}>${d.Online ? "online" : "offline"}</span></td>
                  <td>${formatTime(d.LoginTime, "never")}</td>
                  <td>${d.EnableState === 0 ? "disabled" : "enabled"}</td>
                </tr>`,
              )}
            </tbody>
          </table>
        </div>`)}
    ${data &&
    html`<${Pager} offset=${query.offset} limit=${PAGE} total=${data.TotalCount}
      onOffset=${(offset) => setQuery({ ...query, offset })} label="Devices" />`}
  </section>`;
}

export function DeviceView({ call, productId, deviceName }) {
  const shadow = useLoad(async () => {
    const answer = await call("DescribeDeviceShadow", { ProductId: productId, DeviceName: deviceName });
    return parseShadowData(answer.Data);
  }, [productId, deviceName]);
  // note the vendor's upper-case ProductID in DescribeDevice
  const device = useLoad(() => call("DescribeDevice", { ProductID: productId, DeviceName: deviceName }), [
    productId,
    deviceName,
  ]);
  // kept here, not in the editor: a save reloads the shadow, which remounts the editor at the new version
  const [outcome, setOutcome] = useState({ error: null, saved: "" });
  const s = shadow.data;
  return html`<section aria-labelledby="device-title">
    <p class="crumbs">
      <a href="#/products">Products</a> / <a href=${href("products", productId)}>${productId}</a> / ${deviceName}
    </p>
    <h1 id="device-title">${deviceName}</h1>
    <${ErrorNotice} error=${device.error} />
    ${device.data &&
    html`<dl class="facts">
      <dt>Online</dt><dd>${device.data.Online ? "online" : "offline"}</dd>
      <dt>Last login</dt><dd>${formatTime(device.data.LoginTime, "never")}</dd>
      <dt>Enable state</dt><dd>${device.data.EnableState === 0 ? "disabled" : "enabled"}</dd>
      <dt>Created</dt><dd>${formatTime(device.data.CreateTime)}</dd>
    </dl>`}
    <h2>Shadow</h2>
    <${ErrorNotice} error=${shadow.error} />
    <${Loading} when=${shadow.loading && !s} />
    ${s &&
    html`<dl class="facts">
        <dt>Version</dt><dd class="shadow-version">${s.version}</dd>
        <dt>Updated</dt><dd>${formatTime(Math.floor((s.timestampMs || 0) / 1000))}</dd>
      </dl>
      <div class="shadow-grid">
        <div><h3>Reported</h3><${Json} value=${s.reported} label="reported" /></div>
        <div><h3>Desired</h3><${Json} value=${s.desired} label="desired" /></div>
        <div><h3>Delta</h3><${Json} value=${s.delta} label="delta" /></div>
        <div><h3>Metadata</h3><${Json} value=${s.metadata} label="metadata" /></div>
      </div>
      <${DesiredEditor} key=${s.version} call=${call} productId=${productId} deviceName=${deviceName} shadow=${s}
        onOutcome=${setOutcome} reload=${shadow.reload} />
      <${ErrorNotice} error=${outcome.error} />
      <${Success} text=${outcome.saved} />`}
  </section>`;
}

/**
 * The desired section as editable JSON, saved with ShadowVersion = the version shown. Keyed by that version, so
 * a reload (after a save, or after the version check refused one) starts again from the document shown.
 */
function DesiredEditor({ call, productId, deviceName, shadow, onOutcome: setOutcome, reload }) {
  const [text, setText] = useState(JSON.stringify(shadow.desired || {}, null, 2));
  const [busy, setBusy] = useState(false);
  const save = async (event) => {
    event.preventDefault();
    let edited;
    try {
      edited = JSON.parse(text);
    } catch (error) {
      setOutcome({ error: new Error(`The desired state is not valid JSON (${error.message}); fix it and save again.`), saved: "" });
      return;
    }
    if (!isJsonObject(edited)) {
      setOutcome({ error: new Error('The desired state must be a JSON object, e.g. {"color": "red"}.'), saved: "" });
      return;
    }
    const patch = desiredPatch(shadow.desired, edited);
    if (Object.keys(patch).length === 0) {
      setOutcome({ error: null, saved: "Nothing to save: the desired state is unchanged." });
      return;
    }
    setBusy(true);
    try {
      const answer = await call("UpdateDeviceShadow", {
        ProductId: productId,
        DeviceName: deviceName,
        State: JSON.stringify({ desired: patch }),
        ShadowVersion: shadow.version,
      });
      const version = JSON.parse(answer.Data).payload.version;
      // Said once the document shown is the saved one: until the reload lands, the editor still shows (and
      // would save against) the old version.
      await reload();
      setOutcome({ error: null, saved: `Saved: the shadow is at version ${version}.` });
    } catch (error) {
      if (error instanceof ApiError && error.code === "FailedOperation.UpdateVersionNotMatch") {
        // Reload and start again from the current document: re-sending this edit as a patch against the newer
        // version would silently undo whatever changed in between (the notice's hint says so).
        await reload();
        setOutcome({ error, saved: "" });
      } else {
        setOutcome({ error, saved: "" });
      }
    } finally {
      setBusy(false);
    }
  };
  return html`<form class="editor" onSubmit=${save} aria-labelledby="desired-title">
    <h3 id="desired-title">Edit desired</h3>
    <label for="desired-json">Desired state (JSON object; a key you delete is removed from the shadow)</label>
    <textarea id="desired-json" rows="8" spellcheck="false" value=${text} onInput=${(e) => setText(e.currentTarget.value)} />
    <div class="actions">
      <button type="submit" disabled=${busy}>Save desired (version ${shadow.version})</button>
    </div>
  </form>`;
}
