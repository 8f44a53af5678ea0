// The console's entry point: sign-in, the hash router and the page frame (docs/console.md).

import { createClient } from "./api.js";
import { DeviceList, DeviceView } from "./devices.js";
import { ProductList } from "./products.js";
import { clearCredentials, loadCredentials, saveCredentials } from "./session.js";
import { signingAvailable } from "./signer.js";
import { NewTask } from "./task_form.js";
import { TaskDetail, TaskList } from "./tasks.js";
import { ErrorNotice } from "./ui.js";
import { html, render, useEffect, useMemo, useState } from "./vendor/preact-htm.js";

/** The view named by location.hash: #/products, #/products/P, #/products/P/devices/D, #/tasks, #/tasks/new, #/tasks/T. */
export function parseRoute(hash) {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const [section = "products", id, sub, name] = parts;
  if (section === "products" && !id) return { view: "products" };
  if (section === "products" && id && !sub) return { view: "devices", productId: id };
  if (section === "products" && id && sub === "devices" && name) return { view: "device", productId: id, deviceName: name };
  if (section === "tasks" && !id) return { view: "tasks" };
  if (section === "tasks" && id === "new") return { view: "new-task" };
  if (section === "tasks" && id && !sub) return { view: "task", taskId: id };
  return { view: "not-found" };
}

function useHashRoute() {
  const [hash, setHash] = useState(location.hash);
  useEffect(() => {
    const onChange = () => setHash(location.hash);
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return parseRoute(hash);
}

function SignIn({ onSignedIn }) {
  const [secretId, setSecretId] = useState("");
  const [secretKey, setSecretKey] = useState("");
  const [state, setState] = useState({ busy: false, error: null });
  const submit = async (event) => {
    event.preventDefault();
    setState({ busy: true, error: null });
    const credentials = { secretId: secretId.trim(), secretKey: secretKey.trim() };
    try {
      // any signed call checks the pair; DescribeProducts is the first thing the console shows anyway
      await createClient(credentials)("DescribeProducts", { Offset: 0, Limit: 10 });
    } catch (error) {
      setState({ busy: false, error });
      return;
    }
    saveCredentials(credentials);
    onSignedIn(credentials);
  };
  // autocomplete off: the key belongs in this tab's sessionStorage only, not in the browser's password store
  return html`<main id="main" class="sign-in">
    <h1>Sign in to fleetops</h1>
    <p>Use an API key pair of your account (<code>fleetops keys create</code> prints one). It is kept in this tab
      only and leaves the browser only as request signatures.</p>
    <form onSubmit=${submit}>
      <label>SecretId
        <input name="secret-id" value=${secretId} onInput=${(e) => setSecretId(e.currentTarget.value)} required
          autocomplete="off" spellcheck="false" />
      </label>
      <label>SecretKey
        <input name="secret-key" type="password" value=${secretKey} onInput=${(e) => setSecretKey(e.currentTarget.value)}
          required autocomplete="off" />
      </label>
      <button type="submit" disabled=${state.busy}>Sign in</button>
    </form>
    <${ErrorNotice} error=${state.error} />
  </main>`;
}

function Console({ credentials, onSignOut }) {
  const route = useHashRoute();
  const call = useMemo(() => createClient(credentials), [credentials]);
  const [flash, setFlash] = useState("");
  useEffect(() => {
    if (route.view !== "tasks") setFlash("");
  }, [route.view]);
  const onCreated = (taskId) => {
    setFlash(`Task ${taskId} created.`);
    location.hash = "#/tasks";
  };
  const section = route.view.startsWith("task") || route.view === "new-task" ? "tasks" : "products";
  let page;
  if (route.view === "products") page = html`<${ProductList} call=${call} />`;
  else if (route.view === "devices") page = html`<${DeviceList} key=${route.productId} call=${call} productId=${route.productId} />`;
  else if (route.view === "device") page = html`<${DeviceView} call=${call} productId=${route.productId} deviceName=${route.deviceName} />`;
  else if (route.view === "tasks") page = html`<${TaskList} call=${call} flash=${flash} />`;
  else if (route.view === "new-task") page = html`<${NewTask} call=${call} onCreated=${onCreated} />`;
  else if (route.view === "task") page = html`<${TaskDetail} key=${route.taskId} call=${call} taskId=${route.taskId} />`;
  else page = html`<h1>Not found</h1><p>No such page. <a href="#/products">Go to the products</a>.</p>`;
  return html`<header class="top">
      <a class="brand" href="#/products">fleetops</a>
      <nav aria-label="Sections">
        <a href="#/products" aria-current=${section === "products" ? "page" : undefined}>Products</a>
        <a href="#/tasks" aria-current=${section === "tasks" ? "page" : undefined}>Tasks</a>
      </nav>
      <span class="who">Key <code>${credentials.secretId}</code></span>
      <button type="button" onClick=${onSignOut}>Sign out</button>
    </header>
    <main id="main">${page}</main>`;
}

function App() {
  const [credentials, setCredentials] = useState(loadCredentials);
  const [failure, setFailure] = useState(null);
  useEffect(() => {
    // nothing fails silently: an error no view caught is shown at the top of the page
    const onError = (event) => setFailure(event.reason || event.error || new Error(String(event.message)));
    window.addEventListener("error", onError);
    window.addEventListener("unhandledrejection", onError);
    return () => {
      window.removeEventListener("error", onError);
      window.removeEventListener("unhandledrejection", onError);
    };
  }, []);
  if (!signingAvailable()) {
    return html`<main id="main"><div class="notice error" role="alert"><p>This page cannot sign API requests: the
      browser offers WebCrypto only on HTTPS or on localhost. Open the console over HTTPS (a TLS reverse proxy in
      front of fleetops) or through an SSH tunnel to localhost.</p></div></main>`;
  }
  const signOut = () => {
    clearCredentials();
    setCredentials(null);
  };
  return html`${failure && html`<${ErrorNotice} error=${failure} />`}
    ${credentials
      ? html`<${Console} credentials=${credentials} onSignOut=${signOut} />`
      : html`<${SignIn} onSignedIn=${setCredentials} />`}`;
}

render(html`<${App} />`, document.getElementById("app"));
