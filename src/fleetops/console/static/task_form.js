// Creating an UpdateShadow or PublishMessage task, with a preview of how many devices the filter matches now
// (the PreviewTask extension action: CreateTask's parameters, CreateTask's validation, nothing written).

import { ApiError } from "./api.js";
import { html, useEffect, useRef, useState } from "./vendor/preact-htm.js";
import { allProducts } from "./products.js";
import { rememberTaskFilter } from "./session.js";
import { ErrorNotice, Loading, useLoad } from "./ui.js";

const PREVIEW_DELAY_MS = 400; // after the last keystroke
const MAX_EXECUTION_TIME_S = 86400;

const INITIAL = {
  productId: "",
  taskType: "UpdateShadow",
  filter: "",
  desired: '{"color": "red"}',
  topic: "control",
  payload: "",
  when: "now",
  startAt: "",
  maxExecutionTimeS: "",
};

/** An integer field as a number, anything else as typed: the API, not the console, says what is wrong with it. */
function integerOrText(text) {
  return /^-?\d+$/.test(text.trim()) ? Number(text) : text;
}

/** CreateTask's parameters from the form, or an Error saying what is missing before anything can be sent. */
export function taskParams(form) {
  if (!form.productId) return new Error("Choose a product.");
  let scheduleTimeS = 0;
  if (form.when === "at") {
    const startMs = new Date(form.startAt).getTime();
    if (!form.startAt || Number.isNaN(startMs)) return new Error("Choose the start time, or start now.");
    scheduleTimeS = Math.floor(startMs / 1000);
  }
  const params = {
    TaskType: form.taskType,
    ProductId: form.productId,
    DeviceNameFilter: form.filter,
    ScheduleTimeInSeconds: scheduleTimeS,
    Tasks:
      form.taskType === "UpdateShadow"
        ? { UpdateShadowTask: { Desired: form.desired } }
        : { PublishMessageTask: { Topic: form.topic, Payload: form.payload } },
  };
  if (form.maxExecutionTimeS.trim() !== "") params.MaxExecutionTimeInSeconds = integerOrText(form.maxExecutionTimeS);
  return params;
}

function Preview({ preview }) {
  if (preview.state === "idle") return null;
  if (preview.state === "loading") return html`<p>Counting the devices the filter matches…</p>`;
  if (preview.state === "unavailable") {
    return html`<p class="notice info">Preview not available on this server (it has no PreviewTask action); the task
      can still be created.</p>`;
  }
  if (preview.state === "error") return html`<${ErrorNotice} error=${preview.error} />`;
  const { MatchedDeviceCnt: count, DeviceNames: names } = preview.answer;
  return html`<div class="notice info preview-result">
    <p><strong class="matched-count">${count}</strong> ${count === 1 ? "device matches" : "devices match"} the filter now.</p>
    ${names.length > 0 &&
    html`<p>First ${names.length === count ? "" : names.length} ${names.length === 1 ? "match" : "matches"}:
      ${names.map((n, i) => html`${i ? ", " : ""}<code>${n}</code>`)}${names.length < count ? ", …" : ""}</p>`}
  </div>`;
}

/** Ask PreviewTask after each pause in typing; the answer of an older form state is dropped. */
function usePreview(call, params) {
  const [preview, setPreview] = useState({ state: "idle" });
  const unavailable = useRef(false);
  const generation = useRef(0);
  const key = params instanceof Error ? "" : JSON.stringify(params);
  useEffect(() => {
    const mine = ++generation.current;
    if (!key) {
      setPreview({ state: "idle" });
      return undefined;
    }
    if (unavailable.current) return undefined;
    setPreview({ state: "loading" });
    const timer = setTimeout(async () => {
      try {
        const answer = await call("PreviewTask", JSON.parse(key));
        if (mine === generation.current) setPreview({ state: "ready", answer });
      } catch (error) {
        if (mine !== generation.current) return;
        // a server without the extension: say so once and stop asking
        if (error instanceof ApiError && error.code === "InvalidAction") {
          unavailable.current = true;
          setPreview({ state: "unavailable" });
        } else {
          setPreview({ state: "error", error });
        }
      }
    }, PREVIEW_DELAY_MS);
    return () => clearTimeout(timer);
  }, [key]);
  return preview;
}

export function NewTask({ call, onCreated }) {
  const products = useLoad(() => allProducts(call), []);
  const [form, setForm] = useState(INITIAL);
  const [submit, setSubmit] = useState({ busy: false, error: null });
  const params = taskParams(form);
  const preview = usePreview(call, params);
  // functional updates: two inputs in a row must not build on the same (stale) form
  const set = (name) => (event) => {
    const value = event.currentTarget.value;
    setForm((f) => ({ ...f, [name]: value }));
  };
  useEffect(() => {
    // preselect the first product, unless one was chosen before this effect ran (effects run after paint)
    const first = products.data && products.data[0];
    if (first) setForm((f) => (f.productId ? f : { ...f, productId: first.ProductId }));
  }, [products.data]);
  const create = async (event) => {
    event.preventDefault();
    if (params instanceof Error) {
      setSubmit({ busy: false, error: params });
      return;
    }
    setSubmit({ busy: true, error: null });
    try {
      const answer = await call("CreateTask", params);
      rememberTaskFilter(answer.TaskId, params.DeviceNameFilter);
      onCreated(answer.TaskId);
    } catch (error) {
      setSubmit({ busy: false, error });
    }
  };
  return html`<section aria-labelledby="new-task-title">
    <p class="crumbs"><a href="#/tasks">Tasks</a> / new</p>
    <h1 id="new-task-title">New task</h1>
    <${ErrorNotice} error=${products.error} />
    <${Loading} when=${products.loading && !products.data} />
    <form class="task-form" onSubmit=${create}>
      <label>Product
        <select value=${form.productId} onChange=${set("productId")} required>
          ${(products.data || []).map((p) => html`<option value=${p.ProductId}>${p.ProductName} (${p.ProductId})</option>`)}
        </select>
      </label>
      <fieldset>
        <legend>Task type</legend>
        <label class="inline"><input type="radio" name="task-type" value="UpdateShadow" checked=${form.taskType === "UpdateShadow"}
          onChange=${set("taskType")} /> UpdateShadow (merge into each device's desired state)</label>
        <label class="inline"><input type="radio" name="task-type" value="PublishMessage" checked=${form.taskType === "PublishMessage"}
          onChange=${set("taskType")} /> PublishMessage (send one message to each device)</label>
      </fieldset>
      <label>Device name filter
        <input value=${form.filter} onInput=${set("filter")} autocomplete="off" spellcheck="false" aria-describedby="filter-help" />
      </label>
      <p id="filter-help" class="help">An RE2 regular expression searched in each device name (use ^ and $ to anchor);
        empty matches every device of the product.</p>
      ${form.taskType === "UpdateShadow"
        ? html`<label>Desired (JSON object)
            <textarea rows="4" spellcheck="false" value=${form.desired} onInput=${set("desired")} />
          </label>`
        : html`<label>Topic (after ProductId/DeviceName/)
              <input value=${form.topic} onInput=${set("topic")} autocomplete="off" />
            </label>
            <label>Payload
              <textarea rows="3" value=${form.payload} onInput=${set("payload")} />
            </label>`}
      <fieldset>
        <legend>Start</legend>
        <label class="inline"><input type="radio" name="when" value="now" checked=${form.when === "now"} onChange=${set("when")} /> now</label>
        <label class="inline"><input type="radio" name="when" value="at" checked=${form.when === "at"} onChange=${set("when")} /> at</label>
        <label class="inline wrap">Start time (local)
          <input type="datetime-local" step="1" value=${form.startAt} disabled=${form.when !== "at"} onInput=${set("startAt")} />
        </label>
      </fieldset>
      <label>Max execution time in seconds (0..${MAX_EXECUTION_TIME_S}; empty or 0: ${MAX_EXECUTION_TIME_S})
        <input inputmode="numeric" value=${form.maxExecutionTimeS} onInput=${set("maxExecutionTimeS")} autocomplete="off" />
      </label>
      <section class="preview" aria-live="polite" aria-label="Matching devices">
        <${Preview} preview=${preview} />
      </section>
      <${ErrorNotice} error=${submit.error} />
      <div class="actions">
        <button type="submit" disabled=${submit.busy}>Create task</button>
        <a href="#/tasks">Back to the tasks</a>
      </div>
    </form>
  </section>`;
}
