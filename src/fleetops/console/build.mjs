// `make console`: bundle Preact, its hooks and htm (vendor-entry.js) into static/vendor/preact-htm.js, the one
// built file of the console, committed so that fleetops serves it without Node. The banner names the exact
// versions and licences, read from the installed packages (package-lock.json pins them).
import { readFileSync } from "node:fs";
import { build } from "esbuild";

const packages = ["preact", "htm"].map((name) => {
  const meta = JSON.parse(readFileSync(new URL(`node_modules/${name}/package.json`, import.meta.url)));
  return `${name} ${meta.version} (${meta.license})`;
});

await build({
  entryPoints: ["vendor-entry.js"],
  bundle: true,
  format: "esm",
  minify: true,
  target: "es2022",
  legalComments: "none",
  banner: { js: `/*! fleetops console vendor bundle (make console): ${packages.join(", ")} */` },
  outfile: "static/vendor/preact-htm.js",
  logLevel: "info",
});
