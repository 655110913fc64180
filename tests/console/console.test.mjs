// The console in a real browser: Debian's Chromium driven by Playwright
// against `schoolbell serve` on loopback, with seeded data. Run by
// xtask/test (`node --test tests/console/`).

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import { District, accessible, browser, shoot, signIn, until } from "./harness.mjs";

const PASSWORD = "correct horse battery staple";
const FOUR = "columns=student-id=Student ID; last-name=Last Name; first-name=First Name; birth-date=Birth Date:date";
let district;
let url;
let chrome;

before(async () => {
  district = new District();
  const d = district;
  d.sb(["user", "add", "admin", "--role", "owner", "--email", "admin@district.example"]);
  d.sb(["user", "add", "sam", "--role", "staff", "--email", "sam@district.example"]);
  d.sb(["user", "add", "pat", "--role", "staff", "--email", "pat@district.example", "--permission", "authorize"]);
  for (const name of ["admin", "sam", "pat"]) {
    d.sb(["user", "passwd", name], `${PASSWORD}\n`);
  }
  for (const plugin of ["import-csv-roster", "test-slow-import", "notifier-attendance"]) {
    d.sb(["plugin", "install", "--grant-all", d.plugin(plugin)]);
  }
  d.sb(["source", "add-folder", "batch", "--folder", "batch"]);
  d.sb([
    "task", "add", "slow-import", "--plugin", "test-slow-import", "--schedule", "daily at 22:00",
    "--source", "batch", "--prefix", "Slow_", "--collection", "students", "--key", "student-id",
  ]);
  d.sb([
    "task", "add", "sams-import", "--owner", "sam", "--plugin", "test-slow-import", "--schedule", "daily at 22:00",
    "--source", "batch", "--prefix", "Sam_", "--collection", "students", "--key", "student-id", "--param", "spin=0",
  ]);
  d.sb([
    "task", "add", "roster-sam", "--owner", "sam", "--plugin", "import-csv-roster", "--schedule", "daily at 22:00",
    "--source", "batch", "--prefix", "Roster_", "--collection", "students", "--key", "student-id", "--param", FOUR,
  ]);
  d.sb([
    "task", "add", "roster-dupes", "--plugin", "import-csv-roster", "--schedule", "daily at 22:00", "--source", "batch",
    "--prefix", "Dupes_", "--collection", "students", "--key", "student-id", "--match-rule", "match_student", "--param", FOUR,
  ]);
  // A roster with a markup-laden error, run by the admin: the messages tab's data.
  const roster = d.file(
    "roster.csv",
    "Student ID,Last Name,First Name,Birth Date\n" +
      "S1,Lee,Ann,2010-01-02\nS2,Bo,Cy,<script>alert(1)</script>\nS3,Di,Ed,2011-03-04\nS4,Fay,Gil,tomorrow\n",
  );
  d.sb(["import", "file", "import-csv-roster", roster, "--into", "students", "--key", "student-id", "--param", FOUR]);
  url = await district.serve();
  chrome = await browser();
});

after(async () => {
  await chrome?.close();
  await district?.stop();
});

/// The newest run of a task, as the CLI reports it.
function newestRun(task) {
  const runs = JSON.parse(district.sb(["runs", "list", "--task", task, "--limit", "1", "--json"]));
  return runs[0];
}

test("signing in takes the right password and sets a strict, HttpOnly session cookie", async () => {
  const context = await chrome.newContext();
  const page = await context.newPage();
  await page.goto(`${url}/`);
  assert.match(page.url(), /\/login\?next=/, "an anonymous visit is sent to sign in");
  await page.getByLabel("User name").fill("admin");
  await page.getByLabel("Password").fill("not the password at all");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("alert").filter({ hasText: "the user name or the password is wrong" }).waitFor();
  await shoot(page, "sign-in");
  await accessible(page, "sign-in");
  await page.getByLabel("User name").fill("admin");
  await page.getByLabel("Password").fill(PASSWORD);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.waitForURL(`${url}/`);
  const [cookie] = (await context.cookies()).filter((c) => c.name === "sb_session");
  assert.ok(cookie.httpOnly, "HttpOnly");
  assert.equal(cookie.sameSite, "Strict");
  // A form posted without the anti-forgery token is refused.
  const status = await page.evaluate(async (u) => {
    const r = await fetch(`${u}/profile`, { method: "POST", body: new URLSearchParams({ csrf: "00", job_email: "never" }) });
    return r.status;
  }, url);
  assert.equal(status, 403);
  // Signing out ends the session: the old cookie no longer works.
  await page.getByRole("button", { name: /Sign out/ }).click();
  await page.waitForURL(/\/login/);
  await context.addCookies([cookie]);
  await page.goto(`${url}/`);
  assert.match(page.url(), /\/login/, "the signed-out session is gone");
  await context.close();
});

test("a running import's progress moves without a reload, and No Thanks keeps it while Yes cancels it, then it is deleted", async () => {
  // Two hundred 64 KiB chunks, each spun over: long enough to watch.
  const line = "S000000,Someone Quite Ordinary\n";
  district.file("batch/Slow_roster.csv", "Student ID,Last Name\n" + line.repeat(Math.ceil((200 * 65536) / line.length)));
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.evaluate(() => (window.notReloaded = true));
  district.sb(["task", "run-now", "slow-import"]);
  const run = await until("the import to run", () => {
    const r = newestRun("slow-import");
    return r && r.status === "running" && r;
  });
  const row = page.locator("tr", { has: page.getByRole("link", { name: "slow-import" }) }).first();
  await row.locator(".status", { hasText: "running" }).waitFor();
  const progress = async () => (await row.locator(".progress-count").textContent()).trim();
  const first = await until("a first progress figure", async () => (await progress()) || null);
  await until("progress to move on", async () => (await progress()) !== first);
  assert.equal(await page.evaluate(() => window.notReloaded), true, "the page was not reloaded");
  await shoot(page, "all-system-tasks");
  await accessible(page, "all-system-tasks");

  const cancel = row.getByRole("button", { name: `Cancel run ${run.id} of slow-import` });
  await cancel.click();
  const dialog = page.getByRole("dialog", { name: "Cancel this task?" });
  await dialog.waitFor();
  await shoot(page, "cancel-dialog");
  await dialog.getByRole("button", { name: "No Thanks" }).click();
  await dialog.waitFor({ state: "hidden" });
  assert.equal(newestRun("slow-import").status, "running", "No Thanks leaves it running");
  await cancel.click();
  await dialog.getByRole("button", { name: "Yes" }).click();
  await until("the run to be cancelled", () => newestRun("slow-import").status === "cancelled");
  const done = page.locator("tr", { has: page.getByRole("link", { name: "slow-import" }) }).first();
  await done.locator(".status", { hasText: "cancelled" }).waitFor();
  const remove = done.getByRole("button", { name: `Delete run ${run.id} of slow-import` });
  await until("delete to be enabled", () => remove.isEnabled());
  await remove.click();
  await until("the run to be gone", async () => (await page.getByRole("link", { name: "slow-import" }).count()) === 0);
  assert.equal(newestRun("slow-import"), undefined);
  await page.context().close();
});

test("a run's messages filter by the statuses it produced and export as CSV, markup shown as text", async () => {
  const page = await signIn(chrome, url, "admin", PASSWORD);
  const run = newestRun("file:roster.csv");
  await page.getByRole("link", { name: "file:roster.csv" }).first().click();
  await page.getByRole("link", { name: /Task Messages/ }).click();
  // The file's own columns sit beside each message (rows the mapping read).
  const headers = await page.locator("table.messages thead th").allTextContents();
  assert.ok(["student-id", "last-name", "first-name", "birth-date"].every((c) => headers.includes(c)), `${headers}`);
  const lee = page.locator("table.messages tbody tr", { hasText: "new record S1" });
  assert.match(await lee.textContent(), /Lee/);
  // Sensitive fields ([privacy]) are masked here as everywhere.
  assert.match(await lee.textContent(), /\*\*\*\*-01-02/);
  assert.doesNotMatch(await lee.textContent(), /2010-01-02/);
  const options = await page.getByLabel("Status", { exact: true }).locator("option").allTextContents();
  assert.deepEqual(options.slice(1).sort(), ["error", "held", "new"].filter((s) => options.includes(s)).sort());
  assert.ok(!options.includes("updated"), "only statuses this run produced are offered");
  await page.getByLabel("Status", { exact: true }).selectOption("error");
  await page.getByRole("button", { name: "Show" }).click();
  const rows = page.locator("table.messages tbody tr");
  assert.equal(await rows.count(), 2);
  // The script is text on the page, never run (a dialog would fail the test).
  await page.getByText("`<script>alert(1)</script>` in `Birth Date` is not a date", { exact: false }).waitFor();
  assert.equal(await page.locator("table.messages script").count(), 0);
  assert.deepEqual(page.scriptDialogs, [], "no script ran");
  await shoot(page, "task-messages");
  await accessible(page, "task-messages");
  const [download] = await Promise.all([page.waitForEvent("download"), page.getByRole("link", { name: "Export CSV" }).click()]);
  const csv = readFileSync(await download.path(), "utf8").trim().split("\n");
  assert.equal(csv[0], "row,status,field,message");
  assert.equal(csv.length, 3, `a header and two error rows: ${csv}`);
  assert.ok(csv.slice(1).every((l) => l.split(",")[1] === "error"));
  assert.equal(run.message_count >= 4, true);
  await page.context().close();
});

test("the job-completion email preference is saved from the profile", async () => {
  const page = await signIn(chrome, url, "sam", PASSWORD);
  await page.getByRole("link", { name: "Profile" }).click();
  await page.getByLabel("Never").check();
  await page.getByRole("button", { name: "Save email preference" }).click();
  // The page it lands on says what happened.
  await page.waitForURL(`${url}/profile?done=saved`);
  await page.getByRole("status").getByText("Saved.").waitFor();
  assert.ok(await page.getByLabel("Never").isChecked());
  await shoot(page, "profile");
  await accessible(page, "profile");
  const users = JSON.parse(district.sb(["user", "list", "--json"]));
  assert.equal(users.find((u) => u.name === "sam").job_email, "never");
  await page.context().close();
});

test("staff see their own runs only, and another's run is not found", async () => {
  district.sb(["task", "run-now", "sams-import", "--as", "sam"]);
  const sams = await until("sam's run", () => newestRun("sams-import"));
  const pat = await signIn(chrome, url, "pat", PASSWORD);
  assert.equal(await pat.getByRole("link", { name: "sams-import" }).count(), 0);
  assert.equal(await pat.getByRole("link", { name: "file:roster.csv" }).count(), 0);
  const response = await pat.goto(`${url}/runs/${sams.id}`);
  assert.equal(response.status(), 404);
  await pat.context().close();
  const sam = await signIn(chrome, url, "sam", PASSWORD);
  await sam.getByRole("link", { name: "sams-import" }).first().waitFor();
  assert.equal(await sam.getByRole("link", { name: "file:roster.csv" }).count(), 0);
  assert.equal(await sam.getByRole("link", { name: "Users" }).count(), 0, "staff have no Users screen");
  await sam.context().close();
});

test("filters live in the address: a bookmarked filter shows the same runs, and back restores the last one", async () => {
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.getByText("Filters", { exact: true }).click();
  const roster = newestRun("file:roster.csv");
  const other = roster.status === "failed" ? "cancelled" : "failed";
  await page.getByLabel("Status", { exact: true }).selectOption([roster.status, other]);
  await page.getByRole("button", { name: "Apply" }).click();
  await page.waitForURL(new RegExp(`status=${other}`));
  const filtered = page.url();
  assert.match(filtered, new RegExp(`status=${roster.status}`));
  await page.getByLabel("Task", { exact: true }).fill("nothing-has-this-name");
  await page.getByRole("button", { name: "Apply" }).click();
  await page.getByText("No runs match.").waitFor();
  await page.goBack();
  await page.waitForURL(filtered);
  await page.getByRole("link", { name: "file:roster.csv" }).first().waitFor();
  await page.context().close();
});

test("a weekly task is created from the schedule builder, its preview marking the fire daylight saving moved", async () => {
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.getByRole("link", { name: "Tasks", exact: true }).click();
  await page.getByRole("button", { name: "New task" }).click();
  await page.getByLabel("Name").fill("weekly-attendance");
  await page.getByLabel("Plugin").selectOption("notifier-attendance");
  // Picking the plugin brings the form back with its parameters.
  await page.getByText("Parameters of notifier-attendance").waitFor();
  await page.getByLabel("Runs").selectOption("weekly");
  await page.getByLabel("Sunday").check();
  await page.getByLabel("At (time of day)").fill("02:30");
  await page.getByLabel("Time zone").fill("America/New_York");
  // A fixed start, so the preview does not depend on today's date.
  await page.getByLabel("Starts").fill("2027-03-01T00:00");
  const preview = page.locator("#preview");
  await until("the preview to show the spring change", async () =>
    (await preview.textContent()).includes("02:30 does not exist on 2027-03-14"));
  const moved = preview.locator("tr.moved");
  assert.equal(await moved.count(), 1, "one fire of ten is moved");
  assert.match(await moved.textContent(), /2027-03-14 03:00/);
  assert.match(await preview.locator("tbody tr").first().textContent(), /2027-03-07 02:30 EST/);
  await shoot(page, "task-form");
  await accessible(page, "task-form");
  await page.getByRole("button", { name: "Save task" }).click();
  await page.waitForURL(`${url}/tasks`);
  const row = page.locator("tr", { has: page.getByRole("link", { name: "weekly-attendance" }) });
  await row.getByText("weekly on sun at 02:30").waitFor();
  assert.match(await row.textContent(), /2027-03-07 02:30/);
  await shoot(page, "tasks");
  await accessible(page, "tasks");
  await page.context().close();
});

test("a rule with a syntax error shows its line and column, is not saved, and once fixed tests row by row", async () => {
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.getByRole("link", { name: "Rules", exact: true }).click();
  await page.getByRole("link", { name: "attendance_threshold" }).click();
  const source = page.getByLabel("Source (rhai)");
  const good = await source.inputValue();
  await source.fill(good.replace("absences >= params.threshold", "absences >= params.threshold &&& 1"));
  await page.getByRole("button", { name: "Save" }).click();
  const alert = page.getByRole("alert");
  await alert.getByText("Does not compile").waitFor();
  // The third `&` is the error: its own line and column in the source.
  const lines = good.split("\n");
  const line = lines.findIndex((l) => l.includes("absences >= params.threshold")) + 1;
  const column = lines[line - 1].indexOf("absences") + "absences >= params.threshold &&& ".indexOf("&&&") + 3;
  assert.match(await alert.textContent(), new RegExp(`line ${line}, column ${column}:`));
  assert.equal(readFileSync(`${district.rules}/attendance_threshold.rhai`, "utf8"), good, "nothing was saved");
  await shoot(page, "rule-error");
  await accessible(page, "rule-error");
  await page.getByLabel("Source (rhai)").fill(good);
  const row = { absences: 7, division: "", campus: "North", department: "", level: "" };
  await page.getByLabel("Sample rows (a JSON array of objects)").fill(JSON.stringify([row, { ...row, absences: 2 }]));
  await page.getByLabel("Parameters").fill(JSON.stringify({ threshold: 5, division: "", campus: "", department: "", level: "" }));
  await page.getByRole("button", { name: "Test" }).click();
  const verdicts = page.locator("table.verdicts");
  await verdicts.waitFor();
  assert.match(await verdicts.locator("caption").textContent(), /1 of 2 rows match/);
  assert.match(await verdicts.locator("tbody tr").nth(0).textContent(), /match/);
  assert.match(await verdicts.locator("tbody tr").nth(1).textContent(), /no match/);
  await shoot(page, "rule-test");
  // Sample rows can come from a collection instead of being pasted.
  await page.getByLabel("Take sample rows from the collection").fill("students");
  await page.getByLabel("How many").fill("2");
  await page.getByRole("button", { name: "Take them" }).click();
  const picked = JSON.parse(await page.getByLabel("Sample rows (a JSON array of objects)").inputValue());
  assert.equal(picked.length, 2);
  assert.ok(picked.every((r) => typeof r["student-id"] === "string"), "records of the collection, with their fields");
  await page.context().close();
});

test("a test import over the guard is requested with a comment and released with a one-time code from a second user", async () => {
  const count = () => Number(/of (\d+) records/.exec(district.sb(["records", "list", "students", "--limit", "1"]))[1]);
  const before = count();
  const rows = ["T1", "T2", "T3", "T4", "T5"].map((id, i) => `${id},New${i},Kid,2012-0${i + 1}-01`).join("\n");
  district.file("batch/Roster_spring.csv", `Student ID,Last Name,First Name,Birth Date\n${rows}\n`);
  const sam = await signIn(chrome, url, "sam", PASSWORD);
  await sam.getByRole("link", { name: "Tasks", exact: true }).click();
  await sam.getByRole("button", { name: "Test import roster-sam" }).click();
  await sam.waitForURL(/\/runs\/\d+$/);
  const id = Number(/runs\/(\d+)$/.exec(sam.url())[1]);
  await until("the test import to finish", () => newestRun("roster-sam").status === "succeeded");
  await sam.goto(`${url}/runs/${id}/plan`);
  assert.match(await sam.locator(".gauge").textContent(), /authorize at 20%/);
  // Show Change Types: only the new rows.
  for (const t of ["existing", "error", "updated"]) {
    await sam.getByLabel(new RegExp(`^${t} \\(`)).uncheck();
  }
  await sam.getByRole("button", { name: "Show", exact: true }).click();
  const listed = sam.locator("details.plan-row");
  assert.equal(await listed.count(), 5);
  await listed.first().locator("summary").click();
  await shoot(sam, "import-plan");
  await accessible(sam, "import-plan");
  await sam.getByRole("button", { name: "Ok: import exactly this plan" }).click();
  await sam.getByLabel("Why are these changes wanted? (required)").fill("Spring enrolments from the district office");
  await sam.getByRole("button", { name: "Request authorization" }).click();
  await sam.getByText("Authorization was requested").waitFor();
  assert.equal(count(), before, "nothing is written while it waits");

  const pat = await signIn(chrome, url, "pat", PASSWORD);
  await pat.goto(`${url}/runs/${id}/plan`);
  await pat.getByRole("button", { name: "Issue a one-time code" }).click();
  const code = (await pat.locator("strong.code").textContent()).trim();
  assert.match(code, /^[0-9A-F]{32}$/);
  await shoot(pat, "authorization-code");
  await pat.context().close();

  await sam.reload();
  await sam.getByLabel("Approval code").fill(code);
  await sam.getByRole("button", { name: "Release with the code" }).click();
  await until("the import to be committed", () => newestRun("roster-sam").status === "succeeded" && count() === before + 5);
  // The run's page keeps the audit trail: who, when, and the comment.
  await sam.goto(`${url}/runs/${id}`);
  const audit = await sam.locator("dl.summary").textContent();
  assert.match(audit, /sam requested-authorization: “Spring enrolments from the district office”/);
  assert.match(audit, /pat issued-approval-code/);
  assert.match(audit, /sam approved/);
  await sam.context().close();
});

test("an email subject carrying markup is shown as text in the outbox", async () => {
  const students = [{ "student-id": "A1", "first-name": "Eve", "last-name": "<img src=x onerror=alert(1)>", absences: 9,
    division: "Upper", campus: "North", department: "Math", level: "10" }];
  district.sb(["records", "load", "attendance", district.file("attendance.json", JSON.stringify(students)), "--key", "student-id"]);
  district.sb(["task", "add", "attendance-now", "--plugin", "notifier-attendance", "--schedule", "daily at 07:00", "--notify", "admin"]);
  district.sb(["task", "run-now", "attendance-now", "--wait"]);
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.getByRole("link", { name: "Outbox" }).click();
  await page.getByText("Attendance: Eve <img src=x onerror=alert(1)> has 9 absences").waitFor();
  assert.equal(await page.locator("main img").count(), 0, "the markup made no element");
  assert.deepEqual(page.scriptDialogs, [], "no script ran");
  await shoot(page, "outbox");
  await accessible(page, "outbox");
  await page.context().close();
});

test("a bulk cancel shows its filter and count, acts on exactly those runs, and refuses a count that changed", async () => {
  // Queued runs that wait: the task's own runs go one at a time.
  for (let i = 0; i < 3; i++) {
    district.sb(["task", "run-now", "slow-import"]);
  }
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.goto(`${url}/?task=slow-import&status=queued&status=running`);
  const open = page.getByRole("button", { name: /Cancel all \d+ matching runs/ });
  await open.waitFor();
  const shown = Number(/Cancel all (\d+)/.exec(await open.textContent())[1]);
  assert.ok(shown >= 1);
  await open.click();
  const dialog = page.getByRole("dialog", { name: `Cancel ${shown} runs?` });
  assert.match(await dialog.textContent(), /task slow-import/);
  assert.match(await dialog.textContent(), /status queued or running/);
  // Another run joins meanwhile: the count the dialog showed is no longer true.
  district.sb(["task", "run-now", "slow-import"]);
  await dialog.getByRole("button", { name: `Yes, cancel ${shown}` }).click();
  await page.getByRole("alert").filter({ hasText: "match now, not the" }).waitFor();
  await page.goto(`${url}/?task=slow-import&status=queued&status=running`);
  const again = page.getByRole("button", { name: /Cancel all \d+ matching runs/ });
  const now = Number(/Cancel all (\d+)/.exec(await again.textContent())[1]);
  await again.click();
  await page.getByRole("dialog", { name: `Cancel ${now} runs?` }).getByRole("button", { name: `Yes, cancel ${now}` }).click();
  await until("every matching run to stop", () => {
    const runs = JSON.parse(district.sb(["runs", "list", "--task", "slow-import", "--json"]));
    return runs.every((r) => ["cancelled", "succeeded", "failed", "interrupted"].includes(r.status));
  });
  const others = JSON.parse(district.sb(["runs", "list", "--task", "file:roster.csv", "--json"]));
  assert.ok(others.every((r) => r.status !== "cancelled"), "runs outside the filter are untouched");
  await page.context().close();
});

test("a saved view keeps its filters and columns, and the live stream pauses while the tab is hidden", async () => {
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.goto(`${url}/?status=succeeded`);
  await page.getByText("Views", { exact: true }).click();
  await page.getByLabel("Columns, in order").fill("status, task, finished");
  await page.getByLabel("Save these filters and columns as").fill("Done");
  await page.getByRole("button", { name: "Save view" }).click();
  const headers = await page.locator("table.runs thead th").allTextContents();
  assert.deepEqual(headers.slice(0, 3), ["status", "task", "finished"]);
  await page.goto(`${url}/`);
  await page.getByText("Views", { exact: true }).click();
  await page.getByRole("link", { name: "Done" }).click();
  assert.match(page.url(), /status=succeeded/);
  assert.deepEqual((await page.locator("table.runs thead th").allTextContents()).slice(0, 3), ["status", "task", "finished"]);
  const grid = page.locator("#grid");
  await until("the live stream to open", async () => (await grid.getAttribute("data-stream")) === "open");
  await page.evaluate(() => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
    document.dispatchEvent(new Event("visibilitychange"));
  });
  assert.equal(await grid.getAttribute("data-stream"), "paused");
  await page.evaluate(() => {
    Object.defineProperty(document, "hidden", { configurable: true, get: () => false });
    document.dispatchEvent(new Event("visibilitychange"));
  });
  assert.equal(await grid.getAttribute("data-stream"), "open");
  await page.context().close();
});

test("the owner adds a user with permissions and grants a plugin's capability from the console", async () => {
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.getByRole("link", { name: "Users" }).click();
  await page.getByText("Add or change a user").click();
  await page.getByLabel("User name").fill("lee");
  await page.getByLabel("Email", { exact: true }).fill("lee@district.example");
  await page.getByLabel(/autopilot/).check();
  await page.getByRole("button", { name: "Save user" }).click();
  await page.getByRole("cell", { name: "lee@district.example" }).waitFor();
  const lee = JSON.parse(district.sb(["user", "list", "--json"])).find((u) => u.name === "lee");
  assert.deepEqual([lee.role, lee.permissions], ["staff", ["autopilot"]]);
  await accessible(page, "users");
  await page.getByRole("link", { name: "Plugins" }).click();
  await page.getByRole("button", { name: "Revoke write:students from test-slow-import" }).click();
  await page.getByRole("button", { name: "Grant write:students to test-slow-import" }).click();
  await page.getByRole("button", { name: "Revoke write:students from test-slow-import" }).waitFor();
  await page.locator("#component").setInputFiles(district.plugin("notifier-birthday"));
  await page.getByRole("button", { name: "Install", exact: true }).click();
  await page.getByRole("cell", { name: /^notifier-birthday/ }).waitFor();
  await shoot(page, "plugins");
  await accessible(page, "plugins");
  await page.context().close();
  // Staff cannot: the same check as the API.
  const sam = await signIn(chrome, url, "sam", PASSWORD);
  const response = await sam.goto(`${url}/users`);
  assert.equal(response.status(), 403);
  await sam.context().close();
});

test("a new student who shares a name and birth date with another is listed as a possible duplicate", async () => {
  // S1 is Ann Lee, born 2010-01-02 (the first roster); Z9 is another child.
  district.file("batch/Dupes_new.csv", "Student ID,Last Name,First Name,Birth Date\nZ9,Lee,Ann,2010-01-02\n");
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.getByRole("link", { name: "Tasks", exact: true }).click();
  await page.getByRole("button", { name: "Test import roster-dupes" }).click();
  await until("the test import to finish", () => newestRun("roster-dupes").status === "succeeded");
  await page.goto(`${url}/runs/${newestRun("roster-dupes").id}/plan`);
  await page.getByLabel("possible-duplicate (1)").waitFor();
  const row = page.locator("details.change-possible-duplicate");
  assert.equal(await row.count(), 1);
  await row.locator("summary").click();
  assert.match(await row.textContent(), /Z9/);
  assert.match(await row.textContent(), /shares last-name \+ first-name \+ birth-date with: S1/);
  await page.context().close();
});

test("the grid works by keyboard alone: a run's cancel dialog opens, closes and answers from the keys", async () => {
  district.sb(["task", "run-now", "slow-import"]);
  const run = await until("the import to run", () => {
    const r = newestRun("slow-import");
    return r && r.status === "running" && r;
  });
  const page = await signIn(chrome, url, "admin", PASSWORD);
  const cancel = page.getByRole("button", { name: `Cancel run ${run.id} of slow-import` });
  await cancel.waitFor();
  // Tab until the cancel control has focus, as a keyboard user would.
  await until("focus to reach the cancel control", async () => {
    await page.keyboard.press("Tab");
    return page.evaluate((id) => document.activeElement?.id === `cancel-${id}`, run.id);
  }, 20_000);
  await page.keyboard.press("Enter");
  const dialog = page.getByRole("dialog", { name: "Cancel this task?" });
  await dialog.waitFor();
  await page.keyboard.press("Escape");
  await dialog.waitFor({ state: "hidden" });
  assert.equal(newestRun("slow-import").status, "running");
  await cancel.focus();
  await page.keyboard.press("Enter");
  await dialog.waitFor();
  await dialog.getByRole("button", { name: "Yes" }).focus();
  await page.keyboard.press("Enter");
  await until("the run to be cancelled", () => newestRun("slow-import").status === "cancelled");
  await page.context().close();
});

test("a run submitted to the batch for a later time waits in the grid with its start, and can be cancelled", async () => {
  const page = await signIn(chrome, url, "admin", PASSWORD);
  await page.getByRole("link", { name: "Tasks", exact: true }).click();
  const label = "Submit slow-import to the batch queue";
  await page.locator("details.submit", { has: page.locator(`form[aria-label="${label}"]`) }).locator("summary").click();
  const form = page.getByRole("form", { name: label });
  // A start a month ahead, at 22:00 UTC (the district's zone here).
  const day = new Date(Date.now() + 30 * 86_400_000).toISOString().slice(0, 10);
  await form.getByLabel(/Start at/).fill(`${day}T22:00`);
  await form.getByLabel("High priority").check();
  await form.getByLabel("Keep until I delete it").check();
  await form.getByRole("button", { name: "Submit" }).click();
  await page.waitForURL(/\/runs\/\d+$/);
  const id = Number(/runs\/(\d+)$/.exec(page.url())[1]);
  const run = JSON.parse(district.sb(["runs", "show", String(id), "--json"]));
  assert.deepEqual([run.status, run.keep], ["queued", true]);
  await page.goto(`${url}/?task=slow-import`);
  const row = page.locator("tr", { has: page.getByRole("link", { name: "slow-import" }) }).first();
  await row.getByText(`starts ${day} 22:00`).waitFor();
  await row.getByRole("button", { name: `Cancel run ${id} of slow-import` }).click();
  await page.getByRole("dialog", { name: "Cancel this task?" }).getByRole("button", { name: "Yes" }).click();
  await until("the waiting run to be cancelled", () =>
    JSON.parse(district.sb(["runs", "show", String(id), "--json"])).status === "cancelled");
  await page.context().close();
  // Staff without the set-priority permission are not offered high priority.
  const sam = await signIn(chrome, url, "sam", PASSWORD);
  await sam.getByRole("link", { name: "Tasks", exact: true }).click();
  assert.equal(await sam.getByLabel("High priority").count(), 0);
  await sam.context().close();
});
