// End-to-end: two browser pages and one netcat client in one room; a room's past by scrolling up.
//   node scenario.mjs <http base url> <tcp port> <artifacts dir>
// Talks to the Rust test that started it: prints "RESTART" when the server should be restarted
// and waits for "RESTARTED" on stdin. Exits non-zero on the first failed check.
import { chromium } from "playwright-core";
import net from "node:net";
import readline from "node:readline";
import fs from "node:fs";
import path from "node:path";
import assert from "node:assert/strict";

const [base, tcpPort, artifacts] = process.argv.slice(2);
const TIMEOUT = 15000;
fs.mkdirSync(artifacts, { recursive: true });
const stdin = readline.createInterface({ input: process.stdin });
const nextStdinLine = () => new Promise((resolve) => stdin.once("line", resolve));

// A netcat user: a line reader with waits on content.
class Netcat {
  constructor() { this.lines = []; this.waiters = []; this.buffer = ""; }
  connect() {
    return new Promise((resolve, reject) => {
      this.socket = net.createConnection({ host: "127.0.0.1", port: Number(tcpPort) }, resolve);
      this.socket.on("error", reject);
      this.socket.on("data", (data) => {
        this.buffer += data.toString("utf8");
        let at;
        while ((at = this.buffer.indexOf("\n")) >= 0) {
          // The nickname prompt has no line ending: it prefixes the line that follows it.
          this.lines.push(this.buffer.slice(0, at).replace(/^Enter your nickname: /, ""));
          this.buffer = this.buffer.slice(at + 1);
        }
        this.waiters = this.waiters.filter((w) => !w());
      });
    });
  }
  send(line) { this.socket.write(line + "\n"); }
  waitFor(predicate, what) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`netcat: timed out waiting for ${what}`)), TIMEOUT);
      const check = () => {
        const found = this.lines.find(predicate);
        if (found === undefined) return false;
        clearTimeout(timer);
        resolve(found);
        return true;
      };
      if (!check()) this.waiters.push(check);
    });
  }
  async login(nick, room) {
    await this.connect();
    this.send(nick);
    await this.waitFor((l) => l === `Welcome, ${nick}!`, "the welcome");
    this.send(`/join ${room}`);
    await this.waitFor((l) => l === `Joined room: ${room}` || l.startsWith("Error: No such room"), "the join");
    if (this.lines.some((l) => l.startsWith("Error: No such room"))) {
      this.send(`/create ${room}`);
      await this.waitFor((l) => l === `Created and joined room: ${room}`, "the create");
    }
  }
  chat() { return this.lines.filter((l) => l.startsWith("[trio] ")); }
}

async function openPage(browser, nick) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 640 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => { throw error; });
  await page.goto(base);
  await page.fill("#nickname", nick);
  await page.keyboard.press("Enter"); // keyboard only
  await page.waitForSelector("#login", { state: "hidden", timeout: TIMEOUT });
  await page.waitForSelector(".status.online", { timeout: TIMEOUT });
  return page;
}

async function say(page, text) {
  await page.focus("#input");
  await page.keyboard.type(text);
  await page.keyboard.press("Enter");
}

// The room's messages as the page shows them: [seq, "nick: text"].
const shown = (page) => page.$$eval("#messages li.message", (items) =>
  items.map((li) => [Number(li.dataset.seq), `${li.querySelector(".nick").textContent}: ${li.lastChild.textContent}`]));

async function waitForCount(page, count, what) {
  await page.waitForFunction((n) => document.querySelectorAll("#messages li.message").length >= n, count,
    { timeout: TIMEOUT }).catch(() => { throw new Error(`${what}: fewer than ${count} messages shown`); });
}

// Lines the page shows in its room besides messages (system notices, replies, errors).
const notices = (page) => page.$$eval("#messages li:not(.message)", (items) => items.map((li) => li.textContent));

// Entering a room by a command of one's own is no "reset": nothing was lost.
async function assertNoResetNotice(page, what) {
  const lost = (await notices(page)).filter((text) => text.includes("no longer available"));
  assert.deepEqual(lost, [], `${what}: the page says messages were lost`);
}

function assertContiguous(list, what) {
  list.forEach(([seq], i) => assert.equal(seq, list[0][0] + i, `${what}: seq ${seq} at position ${i} (gap or duplicate)`));
}

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"],
});
try {
  const tux = new Netcat();
  await tux.login("tux", "trio");
  const ann = await openPage(browser, "ann");
  const ben = await openPage(browser, "ben");
  for (const page of [ann, ben]) {
    await say(page, "/join trio");
    await page.waitForFunction(() => document.querySelector("#room-title").textContent === "# trio", null, { timeout: TIMEOUT });
  }

  // Everyone talks; everyone sees everything, in one order.
  await say(ann, "hello from ann");
  await waitForCount(ann, 1, "ann's own message");
  await say(ben, "hello from ben");
  await waitForCount(ben, 2, "ben's message");
  tux.send("hello from tux");
  for (const page of [ann, ben]) await waitForCount(page, 3, "all three messages");
  await tux.waitFor((l) => l === "[trio] ben: hello from ben", "ben's message over TCP");
  for (const page of [ann, ben]) await assertNoResetNotice(page, "after joining trio");
  const order = (await shown(ann)).map(([, line]) => line);
  assert.deepEqual((await shown(ben)).map(([, line]) => line), order, "both pages, one order");
  assert.deepEqual(tux.chat().map((l) => l.slice("[trio] ".length)), order, "netcat sees the same order");
  assert.equal(await ann.$eval("#messages li.message.mine", (li) => li.lastChild.textContent), "hello from ann");

  // A DM from netcat shows up in the page, set apart.
  tux.send("/dm ann just between us");
  await ann.waitForSelector("#messages li.dm", { timeout: TIMEOUT });
  assert.equal(await ann.$eval("#messages li.dm", (li) => li.lastChild.textContent), "just between us");

  // Markup is text, never HTML.
  const evil = `<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2">`;
  tux.send(evil);
  await waitForCount(ann, 4, "the markup message");
  assert.equal((await shown(ann)).at(-1)[1], `tux: ${evil}`);
  assert.equal(await ann.evaluate(() => window.__xss), undefined, "no script ran");
  assert.equal(await ann.$$eval("#messages img, #messages script", (n) => n.length), 0, "no element was injected");
  await ann.screenshot({ path: path.join(artifacts, "chat.png") });

  // The server restarts; netcat reconnects at once and speaks while the pages are still away.
  const before = await shown(ann);
  console.log("RESTART");
  await nextStdinLine();
  const tux2 = new Netcat();
  await tux2.login("tux", "trio");
  tux2.send("while you were away");
  for (const page of [ann, ben]) {
    await page.waitForSelector(".status.online", { timeout: TIMEOUT });
    await waitForCount(page, before.length + 1, "the message sent during the reconnect");
  }
  tux2.send("after the restart");
  for (const page of [ann, ben]) {
    await waitForCount(page, before.length + 2, "the message after the restart");
    const after = await shown(page);
    assert.deepEqual(after.slice(0, before.length), before, "what was shown stays, once");
    assert.deepEqual(after.slice(before.length).map(([, l]) => l), ["tux: while you were away", "tux: after the restart"]);
    assertContiguous(after, "after the restart");
  }
  await say(ben, "ben is back");
  await tux2.waitFor((l) => l === "[trio] ben: ben is back", "ben's message after the restart");
  await ann.screenshot({ path: path.join(artifacts, "after-restart.png") });

  // A room with a past: the page shows its last page; scrolling up brings the rest, a page at a
  // time, in order, each message once, and the live stream goes on below.
  const total = 130;
  tux2.send("/create archive");
  await tux2.waitFor((l) => l === "Created and joined room: archive", "the archive room");
  for (let i = 1; i <= total; i++) tux2.send(`old ${i}`);
  await tux2.waitFor((l) => l === `[archive] tux: old ${total}`, "the last old message's echo");
  await say(ann, "/join archive");
  await waitForCount(ann, 50, "the first page");
  const firstPage = await shown(ann);
  assert.equal(firstPage.length, 50, "one page on entering");
  assert.equal(firstPage.at(-1)[0], total);
  await assertNoResetNotice(ann, "after joining archive");
  for (const expected of [100, total]) {
    await ann.$eval("#messages", (list) => { list.scrollTop = 0; list.dispatchEvent(new Event("scroll")); });
    await waitForCount(ann, expected, `scrolled back to ${expected} messages`);
  }
  tux2.send("live after scrolling");
  await waitForCount(ann, total + 1, "the live message after scrolling back");
  const all = await shown(ann);
  assert.equal(all.length, total + 1, "every message once");
  assert.equal(all[0][0], 1, "back to the room's first message");
  assertContiguous(all, "scrolled history and live stream");
  assert.deepEqual(all.map(([, l]) => l), [...Array.from({ length: total }, (_, i) => `tux: old ${i + 1}`), "tux: live after scrolling"]);
  await ann.setViewportSize({ width: 420, height: 720 });
  await ann.screenshot({ path: path.join(artifacts, "narrow.png") });
  console.log("PASS");
  process.exit(0);
} catch (error) {
  console.error(error.stack || String(error));
  process.exit(1);
} finally {
  await browser.close().catch(() => {});
}
