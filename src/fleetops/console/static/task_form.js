// Creating an UpdateShadow or PublishMessage task, with a preview of how many devices the filter matches now
// (the PreviewTask extension action: CreateTask's parameters, CreateTask's validation, nothing written), and
// the fleetops extensions of CreateTask (docs/extensions.md): outcomes, a rollout rate, abort criteria, a
// convergence window, late delivery. Left empty, the parameters are Tencent's CreateTask's exactly.

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
  // extensions
  trackOutcomes: false,
  maxRate: "",
  baseRate: "",
  incrementPercent: "",
  incrementEvery: "",
  abortPercent: "",
  abortMinDevices: "",
  windowS: "",
  deliverOnConnect: false,
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
  return withExtensions(params, form);
}

// a form of an older shape (or a caller's own) may lack the extension fields: absent is not given
const given = (text) => typeof text === "string" && text.trim() !== "";

/** The extension parameters the form asks for (none when every extension field is empty). */
function withExtensions(params, form) {
  const shadow = form.taskType === "UpdateShadow";
  if (form.trackOutcomes) params.TrackOutcomes = true;
  if (given(form.maxRate)) {
    params.Rollout = { MaxDevicesPerSecond: integerOrText(form.maxRate) };
    if (given(form.baseRate) || given(form.incrementPercent) || given(form.incrementEvery)) {
      // the API says what is missing when only some of the three are given
      if (given(form.baseRate)) params.Rollout.BaseDevicesPerSecond = integerOrText(form.baseRate);
      if (given(form.incrementPercent)) params.Rollout.IncrementPercent = integerOrText(form.incrementPercent);
      if (given(form.incrementEvery)) params.Rollout.IncrementEveryDevices = integerOrText(form.incrementEvery);
    }
  }
  if (given(form.abortPercent) || given(form.abortMinDevices)) {
    params.AbortCriteria = [
      {
        Outcome: shadow ? "NotConverged" : "Offline",
        ThresholdPercent: integerOrText(form.abortPercent),
        MinProcessedDevices: given(form.abortMinDevices) ? integerOrText(form.abortMinDevices) : 1,
      },
    ];
  }
  if (shadow && given(form.windowS)) params.ConvergenceWindowInSeconds = integerOrText(form.windowS);
  if (!shadow && form.deliverOnConnect) params.DeliverOnConnect = true;
  return params;
}

/**
 * The ClientToken of a submission: kept while the form is unchanged and the task not created, so a retry after
 * a lost answer (a network error) creates one task; a new one for the next task or after any edit.
 */
function useClientToken(params) {
  const current = useRef({ key: null, token: null });
  const key = params instanceof Error ? "" : JSON.stringify(params);
  if (current.current.key !== key) current.current = { key, token: `console-${crypto.randomUUID()}` };
  return {
    token: () => current.current.token,
    used: () => {
      current.current = { key: null, token: null };
    },
  };
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
  const submission = useClientToken(params);
  // functional updates: two inputs in a row must not build on the same (stale) form
  const set = (name) => (event) => {
    const value = event.currentTarget.value;
    setForm((f) => ({ ...f, [name]: value }));
  };
  const check = (name) => (event) => {
    const value = event.currentTarget.checked;
    setForm((f) => ({ ...f, [name]: value }));
  };
  const shadow = form.taskType === "UpdateShadow";
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
      const answer = await call("CreateTask", { ...params, ClientToken: submission.token() });
      submission.used();
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
      <fieldset class="extensions">
        <legend>fleetops extensions (optional)</legend>
        <label class="inline"><input type="checkbox" checked=${form.trackOutcomes} onChange=${check("trackOutcomes")} />
          Track each device's outcome</label>
        <label>Max devices per second (empty: as fast as possible)
          <input inputmode="numeric" value=${form.maxRate} onInput=${set("maxRate")} autocomplete="off" />
        </label>
        <div class="inline-fields">
          <label>Start at devices per second
            <input inputmode="numeric" value=${form.baseRate} onInput=${set("baseRate")} autocomplete="off" />
          </label>
          <label>Grow by %
            <input inputmode="numeric" value=${form.incrementPercent} onInput=${set("incrementPercent")} autocomplete="off" />
          </label>
          <label>every N devices
            <input inputmode="numeric" value=${form.incrementEvery} onInput=${set("incrementEvery")} autocomplete="off" />
          </label>
        </div>
        <div class="inline-fields">
          <label>Abort when more than % ${shadow ? "not converged" : "offline"}
            <input inputmode="numeric" value=${form.abortPercent} onInput=${set("abortPercent")} autocomplete="off" />
          </label>
          <label>of at least N processed devices
            <input inputmode="numeric" value=${form.abortMinDevices} onInput=${set("abortMinDevices")} autocomplete="off" />
          </label>
        </div>
        ${shadow
          ? html`<label>Convergence window in seconds (a written device not reporting the values by then is not converged)
              <input inputmode="numeric" value=${form.windowS} onInput=${set("windowS")} autocomplete="off" />
            </label>`
          : html`<label class="inline"><input type="checkbox" checked=${form.deliverOnConnect} onChange=${check("deliverOnConnect")} />
              Deliver to devices that connect later (until the max execution time)</label>`}
      </fieldset>
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
