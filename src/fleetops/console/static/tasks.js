// Batch tasks: the list with a live progress bar per task, one task's detail, cancelling a waiting task, and the
// fleetops extensions on the detail: the counts per outcome, the devices of an outcome, StopTask.

import { html, useState } from "./vendor/preact-htm.js";
import { usePolling } from "./poll.js";
import { taskFilters } from "./session.js";
import { ErrorNotice, Loading, Pager, Success, formatTime, href, useLoad } from "./ui.js";

const PAGE = 20; // DescribeTasks takes 1..250
export const STATUS = { 1: "waiting", 2: "processing", 3: "completed", 4: "failed", 5: "cancelled" };
const WAITING = 1;
const PROCESSING = 2;
const RUNNING = new Set([1, 2]); // statuses that still change: polled
const OUTCOME_PAGE = 50;

function statusLabel(status) {
  return STATUS[status] || `status ${status}`;
}

export function Progress({ task }) {
  const percent = task.Percent ?? 0;
  const counts = task.AllDeviceCnt === undefined ? "" : `${task.DoneDeviceCnt} / ${task.AllDeviceCnt} devices, `;
  return html`<div class="progress">
    <progress max="100" value=${percent} aria-label=${`Progress of task ${task.Id}`}>${percent} %</progress>
    <span class="progress-text">${counts}${percent} %</span>
  </div>`;
}

function Status({ status }) {
  return html`<span class=${`status status-${status}`}>${statusLabel(status)}</span>`;
}

function CancelButton({ call, task, onDone }) {
  const [busy, setBusy] = useState(false);
  if (task.Status !== WAITING) return null;
  const cancel = async () => {
    setBusy(true);
    try {
      await call("CancelTask", { Id: task.Id });
      onDone(null);
    } catch (error) {
      onDone(error); // e.g. FailedOperation.AsyncTaskAlreadyStarted: it started since the list was loaded
    } finally {
      setBusy(false);
    }
  };
  return html`<button type="button" class="danger" disabled=${busy} onClick=${cancel} aria-label=${`Cancel task ${task.Id}`}>
    Cancel
  </button>`;
}

function StopButton({ call, task, onDone }) {
  const [busy, setBusy] = useState(false);
  if (task.Status !== PROCESSING) return null;
  const stop = async () => {
    setBusy(true);
    try {
      await call("StopTask", { Id: task.Id });
      onDone(null);
    } catch (error) {
      onDone(error);
    } finally {
      setBusy(false);
    }
  };
  const label = task.StopRequested ? "Stopping…" : "Stop";
  return html`<button type="button" class="danger" disabled=${busy || task.StopRequested} onClick=${stop}
    aria-label=${`Stop task ${task.Id}`}>${label}</button>`;
}

/** The counts per outcome (DescribeTask IncludeOutcomeCounts) and the devices of the outcome chosen. */
function Outcomes({ call, task }) {
  const [chosen, setChosen] = useState(null);
  const devices = useLoad(
    () => (chosen ? call("DescribeTaskDevices", { Id: task.Id, Outcome: chosen, Offset: 0, Limit: OUTCOME_PAGE }) : null),
    [chosen, task.DoneDeviceCnt],
  );
  if (!task.OutcomeCounts || task.OutcomeCounts.length === 0) return null;
  return html`<section class="outcomes" aria-labelledby="outcomes-title">
    <h2 id="outcomes-title">Outcomes</h2>
    <ul class="outcome-counts">
      ${task.OutcomeCounts.map(
        (c) => html`<li data-outcome=${c.Outcome}>
          <button type="button" class="link" aria-pressed=${chosen === c.Outcome} onClick=${() => setChosen(c.Outcome)}>
            ${c.Outcome}</button> <strong class="outcome-count">${c.DeviceCnt}</strong>
        </li>`,
      )}
    </ul>
    <${ErrorNotice} error=${devices.error} />
    ${chosen && devices.data &&
    html`<p>${devices.data.TotalCount} ${chosen}${devices.data.TotalCount > OUTCOME_PAGE ? `, the first ${OUTCOME_PAGE}` : ""}:
      ${devices.data.TaskDevices.map((d, i) => html`${i ? ", " : ""}<code>${d.DeviceName}</code>`)}</p>`}
  </section>`;
}

export function TaskList({ call, flash }) {
  const [offset, setOffset] = useState(0);
  const [details, setDetails] = useState({}); // Id -> DescribeTask answer
  const [rowError, setRowError] = useState(null);
  const filters = taskFilters();
  const list = useLoad(async () => {
    const page = await call("DescribeTasks", { Offset: offset, Limit: PAGE });
    // DescribeTasks has neither progress nor schedule: one DescribeTask per row, then only the running ones
    const answers = await Promise.all(page.Tasks.map((t) => call("DescribeTask", { Id: t.Id })));
    setDetails(Object.fromEntries(answers.map((a) => [a.Id, a])));
    return page;
  }, [offset]);
  const running = Object.values(details).filter((d) => RUNNING.has(d.Status));
  const pollError = usePolling(async () => {
    const answers = await Promise.all(running.map((t) => call("DescribeTask", { Id: t.Id })));
    setDetails((old) => ({ ...old, ...Object.fromEntries(answers.map((a) => [a.Id, a])) }));
    return answers.some((a) => RUNNING.has(a.Status));
  }, running.length > 0);
  const refreshOne = async (id) => {
    const answer = await call("DescribeTask", { Id: id });
    setDetails((old) => ({ ...old, [id]: answer }));
  };
  const tasks = list.data ? list.data.Tasks.map((t) => details[t.Id] || t) : [];
  return html`<section aria-labelledby="tasks-title">
    <div class="title-row">
      <h1 id="tasks-title">Tasks</h1>
      <a class="button" href="#/tasks/new">New task</a>
      <button type="button" onClick=${list.reload}>Refresh</button>
    </div>
    <${Success} text=${flash} />
    <${ErrorNotice} error=${list.error} />
    <${ErrorNotice} error=${pollError} />
    <${ErrorNotice} error=${rowError} />
    <${Loading} when=${list.loading && !list.data} />
    ${list.data &&
    (tasks.length === 0
      ? html`<p>No task in the last month. <a href="#/tasks/new">Create one</a>.</p>`
      : html`<div class="table-wrap">
          <table class="tasks">
            <caption class="visually-hidden">Tasks of the last month, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Task</th><th scope="col">Type</th><th scope="col">Product</th><th scope="col">Filter</th>
                <th scope="col">Status</th><th scope="col">Schedule</th><th scope="col">Progress</th><th scope="col"><span class="visually-hidden">Actions</span></th>
              </tr>
            </thead>
            <tbody>
              ${tasks.map(
                (t) => html`<tr key=${t.Id} data-task-id=${t.Id}>
                  <td><a href=${href("tasks", t.Id)}><code>${t.Id}</code></a></td>
                  <td>${t.Type}</td>
                  <td><a href=${href("products", t.ProductId)}><code>${t.ProductId}</code></a></td>
                  <td>${t.Id in filters ? html`<code>${filters[t.Id]}</code>` : "—"}</td>
                  <td><${Status} status=${t.Status} /></td>
                  <td>${formatTime(t.ScheduleTime)}</td>
                  <td><${Progress} task=${t} /></td>
                  <td><${CancelButton} call=${call} task=${t} onDone=${(error) => {
                    setRowError(error);
                    refreshOne(t.Id).catch(setRowError);
                  }} /></td>
                </tr>`,
              )}
            </tbody>
          </table>
        </div>
        <p class="footnote">Filter: shown for tasks created from this tab; DescribeTask does not return it.</p>`)}
    ${list.data && html`<${Pager} offset=${offset} limit=${PAGE} total=${list.data.TotalCount} onOffset=${setOffset} label="Tasks" />`}
  </section>`;
}

// every field of DescribeTask, in the API's order (docs/api.md#describetask)
const FIELDS = [
  "Id",
  "Type",
  "ProductId",
  "Status",
  "CreateTime",
  "UpdateTime",
  "ScheduleTime",
  "DoneTime",
  "AllDeviceCnt",
  "DoneDeviceCnt",
  "Percent",
  "RetCode",
  "ErrMsg",
];
const TIMES = new Set(["CreateTime", "UpdateTime", "ScheduleTime", "DoneTime"]);

export function TaskDetail({ call, taskId }) {
  // with the extension members: outcome counts, a StopTask waiting, the rollout's rate
  const describe = () => call("DescribeTask", { Id: taskId, IncludeOutcomeCounts: true });
  const task = useLoad(describe, [taskId]);
  const [cancelError, setCancelError] = useState(null);
  const t = task.data;
  // outcomes keep moving after the end (devices converge, connect, acknowledge): poll while any is tracked
  const moving = Boolean(t && (RUNNING.has(t.Status) || (t.OutcomeCounts && t.OutcomeCounts.length > 0)));
  const pollError = usePolling(async () => {
    const answer = await describe();
    task.setData(answer);
    return RUNNING.has(answer.Status) || answer.OutcomeCounts.length > 0;
  }, moving);
  const filter = taskFilters()[taskId];
  const value = (key) => {
    if (key === "Status") return html`<${Status} status=${t.Status} /> (${t.Status})`;
    if (TIMES.has(key)) return html`${formatTime(t[key], "0")} ${t[key] ? html`<small>(${t[key]})</small>` : ""}`;
    if (key === "ErrMsg") return t.ErrMsg === "" ? '""' : t.ErrMsg;
    return String(t[key]);
  };
  return html`<section aria-labelledby="task-title">
    <p class="crumbs"><a href="#/tasks">Tasks</a> / <code>${taskId}</code></p>
    <h1 id="task-title">Task <code>${taskId}</code></h1>
    <${ErrorNotice} error=${task.error || pollError} />
    <${ErrorNotice} error=${cancelError} />
    <${Loading} when=${task.loading && !t} />
    ${t &&
    html`${t.Status === 4 &&
      html`<div class="notice error" role="alert"><p><strong>Failed</strong> (RetCode ${t.RetCode}): ${t.ErrMsg}</p></div>`}
      <${Progress} task=${t} />
      <dl class="facts task-fields">
        ${FIELDS.map((key) => html`<dt>${key}</dt><dd data-field=${key}>${value(key)}</dd>`)}
        <dt>DeviceNameFilter</dt><dd>${filter === undefined ? "— (not returned by DescribeTask)" : html`<code>${filter}</code>`}</dd>
        ${t.CurrentDevicesPerSecond !== undefined &&
        html`<dt>Rollout rate</dt><dd data-field="CurrentDevicesPerSecond">${t.CurrentDevicesPerSecond} devices/s</dd>`}
      </dl>
      <${Outcomes} call=${call} task=${t} />
      <div class="actions">
        <${CancelButton} call=${call} task=${t} onDone=${(error) => {
          setCancelError(error);
          task.reload();
        }} />
        <${StopButton} call=${call} task=${t} onDone=${(error) => {
          setCancelError(error);
          task.reload();
        }} />
      </div>`}
  </section>`;
}
