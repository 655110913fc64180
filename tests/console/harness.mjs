// The browser tests' harness: a temporary data directory driven through
// the real binary, `schoolbell serve` on a loopback port, and Debian's
// Chromium under Playwright. Waits are for conditions, with deadlines.

import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, copyFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.SCHOOLBELL_BIN ?? join(root, "target/debug/schoolbell");
const plugins = process.env.SCHOOLBELL_PLUGINS ?? join(root, "target/plugins");
export const screenshots = process.env.SCHOOLBELL_SCREENSHOTS ?? join(root, "target/console-screenshots");

/// Waits until `check` returns something truthy, or fails after `ms`.
export async function until(what, check, ms = 30_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) {
        return last;
      }
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${what} (last: ${last})`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/// A data directory with its own rules, driven through the binary.
export class District {
  constructor(config = "") {
    this.dir = mkdtempSync(join(tmpdir(), "schoolbell-console-"));
    this.data = join(this.dir, "data");
    this.rules = join(this.dir, "rules");
    this.batch = join(this.dir, "batch");
    for (const d of [this.data, this.rules, this.batch]) {
      mkdirSync(d, { recursive: true });
    }
    for (const f of readdirSync(join(root, "rules"))) {
      copyFileSync(join(root, "rules", f), join(this.rules, f));
    }
    writeFileSync(
      join(this.data, "schoolbell.toml"),
      `${config}\n[sandbox.folders]\nbatch = ${JSON.stringify(this.batch)}\n\n[email]\nsmtp_host = ""\n`,
    );
  }

  /// Runs a command; returns its standard output, failing on a non-zero exit.
  sb(args, input) {
    const out = spawnSync(bin, ["--data", this.data, "--rules", this.rules, ...args], {
      input: input ?? "",
      encoding: "utf8",
    });
    if (out.status !== 0) {
      throw new Error(`schoolbell ${args.join(" ")} failed: ${out.stderr}${out.stdout}`);
    }
    return out.stdout;
  }

  plugin(name) {
    return join(plugins, `${name}.wasm`);
  }

  file(name, text) {
    const path = join(this.dir, name);
    writeFileSync(path, text);
    return path;
  }

  /// Starts `serve` on a free loopback port; resolves to its address.
  async serve(extra = []) {
    this.server = spawn(bin, ["--data", this.data, "--rules", this.rules, "serve", "--listen", "127.0.0.1:0", ...extra], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.log = "";
    this.server.stdout.on("data", (d) => (this.log += d));
    this.server.stderr.on("data", (d) => (this.log += d));
    const info = await until("serve.json", () => {
      const path = join(this.data, "serve.json");
      return existsSync(path) && JSON.parse(readFileSync(path, "utf8"));
    });
    this.url = `http://${info.listen}`;
    // The socket answers once the server is ready for CLI commands too.
    await until("the console to answer", async () => (await fetch(`${this.url}/login`)).ok);
    return this.url;
  }

  async stop() {
    if (this.server && this.server.exitCode === null) {
      const exited = new Promise((r) => this.server.once("exit", r));
      this.server.kill("SIGTERM");
      await exited;
    }
  }
}

/// Debian's Chromium, headless, as the machine allows it (no sandbox as
/// root, no background traffic to a network it does not have).
export async function browser() {
  return chromium.launch({
    executablePath: process.env.SCHOOLBELL_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-quic",
    ],
  });
}

/// Signs `user` in on a new page of a new context.
export async function signIn(b, url, user, password, options = {}) {
  const context = await b.newContext({ acceptDownloads: true, ...options });
  const page = await context.newPage();
  // A script dialog (alert) means markup ran as script: tests check none opened.
  page.scriptDialogs = [];
  page.on("dialog", (d) => {
    page.scriptDialogs.push(d.message());
    d.dismiss();
  });
  await page.goto(`${url}/`);
  await page.getByLabel("User name").fill(user);
  await page.getByLabel("Password").fill(password);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${url}/`);
  return page;
}

/// Saves a screenshot of the page for the README's Console section.
export async function shoot(page, name) {
  mkdirSync(screenshots, { recursive: true });
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: false });
}

/// Runs axe-core on the page; fails on serious or critical violations.
export async function accessible(page, name) {
  // Evaluated through the DevTools protocol, which the page's
  // Content-Security-Policy (no inline script) does not govern.
  await page.evaluate(readFileSync(join(root, "tests/console/node_modules/axe-core/axe.min.js"), "utf8"));
  const result = await page.evaluate(async () => await globalThis.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  if (bad.length) {
    const lines = bad.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.map((n) => n.target.join(" ")).slice(0, 3).join("; ")}`);
    throw new Error(`${name}: accessibility violations:\n${lines.join("\n")}`);
  }
}
