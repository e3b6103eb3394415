// End-to-end test of clerk's web pages in a real browser: the shopper chat page (`/`), the staff
// console (`/console`) and the one-tag widget (`/widget.js`), against a running clerk with the
// demo shop. Drives Debian's Chromium through playwright-core (no bundled browsers).
//
//   cd tests/web && npm ci
//   CLERK_BASE=http://127.0.0.1:PORT CLERK_STAFF_KEY=KEY CLERK_OUT=target/web-e2e node tests/web/e2e.mjs
//
// Env: CLERK_BASE (required), CLERK_STAFF_KEY (a staff or admin key; empty when the server has no
// keys), CLERK_OUT (screenshots; default target/web-e2e), CHROMIUM (default /usr/bin/chromium),
// CLERK_E2E_TIMEOUT_MS (default 30000; an assistant reply may take twice that).
//
// Prints one line per passed step; on a failure prints the step and the reason, saves
// failure-*.png to CLERK_OUT and exits 1.

import { chromium } from "playwright-core";
import fs from "node:fs";
import http from "node:http";
import path from "node:path";

const BASE = (process.env.CLERK_BASE || "").replace(/\/+$/, "");
const STAFF_KEY = process.env.CLERK_STAFF_KEY || "";
const OUT = path.resolve(process.env.CLERK_OUT || "target/web-e2e");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = Number(process.env.CLERK_E2E_TIMEOUT_MS) || 30_000;
const REPLY_TIMEOUT = 2 * TIMEOUT;

const PHONE = { width: 390, height: 844 };
const DESKTOP = { width: 1280, height: 800 };

const FAQ_QUESTION = "My jacket is out of warranty. How much do paid repairs cost and how long do they take?";
const CORRECTION = "Paid repairs cost $15–$60 and take 2–3 weeks.";
const STAFF_NAME = "Alex";
const STAFF_REPLY = "Hi, this is Alex from the shop. I can help.";

const MSG = '[data-testid="msg"]';
const ASSISTANT = '[data-testid="msg"][data-role="assistant"]';

let current = "setup";
const problems = []; // uncaught page errors and CSP violations: each fails the run
const consoleErrors = [];

function fail(message) {
  throw new Error(message);
}

async function step(name, fn) {
  current = name;
  const t0 = Date.now();
  await fn();
  console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
}

function watch(page, label) {
  page.on("pageerror", (e) => problems.push(`${label}: uncaught ${e.message}`));
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const text = m.text();
    if (/Content Security Policy/i.test(text)) problems.push(`${label}: ${text}`);
    else consoleErrors.push(`${label}: ${text}`);
  });
}

/** Polls an async condition until it holds (an expect-like wait for values outside the DOM). */
async function until(what, fn, timeout = TIMEOUT) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) fail(`timed out after ${timeout / 1000} s waiting for ${what}${last instanceof Error ? ` (last error: ${last.message})` : ""}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function ready(page) {
  await page.locator('body[data-ready="true"]').waitFor({ state: "attached", timeout: TIMEOUT });
}

/** The number of assistant messages on the page now. */
async function assistantCount(page) {
  return page.locator(ASSISTANT).count();
}

/** Waits until an assistant message after the first `before` is complete and contains `text`. */
async function newAssistantWith(page, before, text, timeout = REPLY_TIMEOUT) {
  const isRegex = text instanceof RegExp;
  await page
    .waitForFunction(
      ([sel, n, needle, flags, regex]) => {
        const match = (s) => (regex ? new RegExp(needle, flags).test(s) : s.includes(needle));
        return [...document.querySelectorAll(sel)].slice(n).some((e) => !e.classList.contains("streaming") && match(e.textContent));
      },
      [ASSISTANT, before, isRegex ? text.source : text, isRegex ? text.flags : "", isRegex],
      { timeout, polling: 100 },
    )
    .catch(async () => {
      const last = await page.locator(ASSISTANT).last().textContent().catch(() => "(none)");
      fail(`no new assistant message containing ${isRegex ? text : JSON.stringify(text)} within ${timeout / 1000} s; the last one says: ${JSON.stringify(last)}`);
    });
}

/** Types a message, sends it with Enter and waits until the reply has finished streaming. */
async function say(page, text) {
  const users = await page.locator(`${MSG}[data-role="user"]`).count();
  const errors = await page.locator(".notice.error").count();
  const composer = page.getByTestId("composer");
  await composer.fill(text);
  await composer.press("Enter");
  await page.locator(`${MSG}[data-role="user"]`).nth(users).waitFor({ timeout: TIMEOUT });
  await page
    .waitForFunction(() => !document.querySelector(".msg.streaming") && !document.querySelector('[data-testid="send"]').disabled, null, {
      timeout: REPLY_TIMEOUT,
      polling: 100,
    })
    .catch(() => fail(`the reply to ${JSON.stringify(text)} did not finish within ${REPLY_TIMEOUT / 1000} s`));
  if ((await page.locator(".notice.error").count()) > errors) {
    fail(`the page reported an error after ${JSON.stringify(text)}: ${await page.locator(".notice.error").last().textContent()}`);
  }
}

async function noHorizontalScroll(page, what) {
  const { sw, iw } = await page.evaluate(() => ({ sw: document.documentElement.scrollWidth, iw: window.innerWidth }));
  if (sw > iw + 1) fail(`${what} scrolls sideways: content ${sw}px wide in a ${iw}px window`);
}

async function staffFetch(p) {
  const headers = { "X-Clerk-Staff": "e2e" };
  if (STAFF_KEY) headers.Authorization = `Bearer ${STAFF_KEY}`;
  const res = await fetch(`${BASE}${p}`, { headers });
  const body = await res.json().catch(() => null);
  if (!res.ok) fail(`GET ${p} answered ${res.status}: ${JSON.stringify(body)}`);
  return body;
}

async function main() {
  if (!BASE) fail("set CLERK_BASE to the running clerk, e.g. http://127.0.0.1:8080");
  fs.mkdirSync(OUT, { recursive: true });
  if (!fs.existsSync(CHROMIUM)) fail(`no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);

  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  const pages = {};
  let merchant = null;
  try {
    const shopperCtx = await browser.newContext({ viewport: PHONE, locale: "en-US" });
    const staffCtx = await browser.newContext({ viewport: DESKTOP, locale: "en-US" });
    shopperCtx.setDefaultTimeout(TIMEOUT);
    staffCtx.setDefaultTimeout(TIMEOUT);
    const shopper = (pages.shopper = await shopperCtx.newPage());
    watch(shopper, "chat");
    let faqMessage;

    await step("a. shopper asks an FAQ on a phone; the answer streams in with its sources", async () => {
      await shopper.goto(`${BASE}/`);
      await ready(shopper);
      const lang = await shopper.evaluate(() => document.documentElement.lang);
      if (!lang.startsWith("en")) fail(`<html lang> is ${JSON.stringify(lang)} for an en-US browser`);
      await noHorizontalScroll(shopper, "the chat page at 390 px");
      // Record every text the assistant bubbles show, in order, to see the reply grow piece by piece.
      await shopper.evaluate(() => {
        window.__clerkTexts = [];
        const log = document.querySelector('[role="log"]');
        new MutationObserver((records) => {
          for (const r of records) {
            const target = r.target.nodeType === 1 ? r.target : r.target.parentElement;
            if (!target || !target.closest('[data-role="assistant"] .bubble')) continue;
            if (r.type === "characterData") window.__clerkTexts.push(r.target.data);
            for (const n of r.addedNodes) if (n.nodeType === 3) window.__clerkTexts.push(n.data);
          }
        }).observe(log, { subtree: true, childList: true, characterData: true });
      });
      const before = await assistantCount(shopper);
      await say(shopper, FAQ_QUESTION);
      await newAssistantWith(shopper, before, "$15–$60");
      faqMessage = shopper.locator(ASSISTANT).filter({ hasText: "$15–$60" }).last();
      await faqMessage.getByTestId("source").first().waitFor();
      const texts = await shopper.evaluate(() => window.__clerkTexts);
      const full = texts.reduce((a, b) => (b.length > a.length ? b : a), "");
      const firstFull = texts.indexOf(full);
      const partial = new Set(texts.slice(0, firstFull).filter((t) => t && t.length < full.length && full.startsWith(t)));
      const pieces = partial.size + 1;
      if (pieces < 2) fail(`the answer appeared in one piece (${texts.length} text changes seen); it should stream`);
      const sources = await faqMessage.getByTestId("source").count();
      // A source is a link to what it cites: opening it shows the passage the answer quotes.
      await faqMessage.getByTestId("source").first().click();
      const passage = faqMessage.getByTestId("passage");
      await passage.filter({ hasText: "$15–$60" }).waitFor();
      console.log(`     streamed in ${pieces} visible pieces; ${sources} source(s); the cited passage opens`);
    });

    await step("b. order status: the shopper verifies and an order card shows #W1000005 delivered", async () => {
      await say(shopper, "Where is my order #W1000005?");
      await say(shopper, "it's wei.tanaka1@example.com");
      const card = shopper.getByTestId("card-order").filter({ hasText: "#W1000005" }).filter({ hasText: "delivered" }).first();
      await card.waitFor();
      // The carrier's scan events come with the tracking id.
      await card.getByTestId("tracking-events").locator("li").first().waitFor();
      if (!(await card.textContent()).includes("810103730582")) fail("the order card lacks its tracking id");
    });

    await step("d. thumbs up on the last answer; thumbs down and a correction on the FAQ answer", async () => {
      const last = shopper.locator(ASSISTANT).last();
      const up = last.getByTestId("thumb-up");
      await up.click();
      await until("thumbs up to be pressed", async () => (await up.getAttribute("aria-pressed")) === "true");
      const down = faqMessage.getByTestId("thumb-down");
      await down.click();
      await until("thumbs down to be pressed", async () => (await down.getAttribute("aria-pressed")) === "true");
      const box = faqMessage.getByTestId("correction");
      await box.fill(CORRECTION);
      await faqMessage.getByTestId("correction-send").click();
      const status = faqMessage.getByTestId("correction-status");
      await until("the page to confirm the correction", async () => /thank|谢谢|gracias/i.test((await status.textContent()) || ""));
    });

    await step("c. a fresh conversation cancels #W1000016 after a Yes; the shop shows it cancelled", async () => {
      await shopper.evaluate(() => localStorage.removeItem("clerk.conversation"));
      await shopper.reload();
      await ready(shopper);
      if (await shopper.locator(MSG).count()) fail("a fresh conversation still shows old messages");
      await say(shopper, "Please cancel my order #W1000016.");
      const confirmOf = () => shopper.locator(ASSISTANT).filter({ hasText: "#W1000016" }).getByTestId("confirm-yes").last();
      if (!(await confirmOf().isVisible())) await say(shopper, "mia.fernandez5@example.com");
      const yes = confirmOf();
      await yes.waitFor({ state: "visible" });
      if (await yes.isDisabled()) fail("the Yes button is disabled on the latest question");
      const before = await assistantCount(shopper);
      await yes.click();
      await newAssistantWith(shopper, before, "cancelled");
      if (!(await yes.isDisabled())) fail("the Yes button stays enabled after it was answered");
      const order = await until(
        "GET /v1/shop/orders/%23W1000016 to say cancelled",
        async () => {
          const o = await staffFetch("/v1/shop/orders/%23W1000016");
          return o.status === "cancelled" ? o : null;
        },
        TIMEOUT,
      );
      console.log(`     order ${order.id} is ${order.status}`);
    });

    await step("e. after a reload the conversation is restored", async () => {
      const count = await shopper.locator(MSG).count();
      await shopper.reload();
      await ready(shopper);
      await shopper.locator(ASSISTANT).filter({ hasText: "cancelled" }).first().waitFor();
      await shopper.locator(`${MSG}[data-role="user"]`).filter({ hasText: "#W1000016" }).first().waitFor();
      const restored = await shopper.locator(MSG).count();
      if (restored < count) fail(`only ${restored} of ${count} messages came back after the reload`);
      const confirmEnabled = await shopper.locator('[data-testid="confirm-yes"]:not([disabled])').count();
      if (confirmEnabled) fail("an answered Yes/No question offers its buttons again after the reload");
    });

    let conversation;
    await step('f. "Talk to a person" hands the conversation over', async () => {
      const before = await assistantCount(shopper);
      await shopper.getByTestId("human").click();
      await newAssistantWith(shopper, before, /person|human|staff|team|colleague|someone|agent/i, TIMEOUT);
      conversation = await shopper.evaluate(() => localStorage.getItem("clerk.conversation"));
      if (!conversation) fail("the page kept no conversation id");
    });

    const staff = (pages.staff = await staffCtx.newPage());
    watch(staff, "console");
    await step("g. staff sign in, find the handoff, claim it and reply", async () => {
      await staff.goto(`${BASE}/console`);
      await ready(staff);
      await staff.getByTestId("key").fill(STAFF_KEY);
      await staff.getByTestId("staff-name").fill(STAFF_NAME);
      await staff.getByTestId("sign-in").click();
      const row = staff.locator(`[data-testid="handoff"][data-conversation="${conversation}"]`);
      await row.waitFor().catch(async () => {
        const err = await staff.locator("#signin-error, #app-error").allTextContents();
        fail(`no handoff for conversation ${conversation} in the queue${err.join("").trim() ? `; the page says: ${err.join(" ")}` : ""}`);
      });
      await row.click({ position: { x: 16, y: 16 } });
      await staff.getByTestId("reply").waitFor({ state: "visible" });
      await row.getByTestId("claim").click();
      await staff.waitForFunction(() => !document.querySelector('[data-testid="reply"]').disabled, null, { timeout: TIMEOUT });
      await staff.getByTestId("reply").fill(STAFF_REPLY);
      await staff.getByTestId("reply-send").click();
      await staff.locator('#history [data-role="staff"]').filter({ hasText: STAFF_REPLY }).waitFor();
      await staff.locator(`#history [data-role="shopper"]`).filter({ hasText: "#W1000016" }).first().waitFor();
    });

    await step("h. the shopper sees the staff reply (polling)", async () => {
      const msg = shopper.locator(`${MSG}[data-role="staff"]`).filter({ hasText: STAFF_REPLY });
      await msg.waitFor({ timeout: 15_000 }).catch(() => fail("the staff reply did not reach the chat page within 15 s"));
      const who = (await msg.locator(".who").textContent()) || "";
      if (!who.includes(STAFF_NAME)) fail(`the staff message is labelled ${JSON.stringify(who)}, without the name ${STAFF_NAME}`);
      const joined = await shopper.getByTestId("joined").count();
      console.log(`     labelled "${who.trim()}"${joined ? '; "a person has joined" shown' : ""}`);
    });

    await step("i. staff open Analytics and see charts", async () => {
      await staff.getByRole("tab", { name: "Analytics" }).click();
      await staff.locator('[data-testid="analytics"] svg').first().waitFor();
      const charts = await staff.locator('[data-testid="analytics"] svg').count();
      console.log(`     ${charts} charts`);
    });

    await step("j. screenshots at phone and desktop sizes", async () => {
      await shopper.screenshot({ path: path.join(OUT, "chat-phone.png") });
      await shopper.setViewportSize(DESKTOP);
      await shopper.screenshot({ path: path.join(OUT, "chat-desktop.png") });
      await staff.screenshot({ path: path.join(OUT, "analytics-desktop.png"), fullPage: true });
      await staff.getByRole("tab", { name: /Handoffs/ }).click();
      await staff.locator('#history [data-role="staff"]').first().waitFor();
      await staff.screenshot({ path: path.join(OUT, "console-desktop.png") });
      await staff.setViewportSize(PHONE);
      await noHorizontalScroll(staff, "the console at 390 px");
      await staff.screenshot({ path: path.join(OUT, "console-phone.png") });
      console.log(`     in ${OUT}`);
    });

    await step("j2. a conversation the server no longer knows: the next message starts a new one", async () => {
      // As after a retention purge: the page's id is sent once as one the server never started.
      const known = await shopper.evaluate(() => localStorage.getItem("clerk.conversation"));
      let rewritten = 0;
      const forget = async (route) => {
        const headers = { ...route.request().headers() };
        if (headers["x-clerk-conversation"] && rewritten === 0) {
          rewritten += 1;
          headers["x-clerk-conversation"] = `conv-${"0".repeat(48)}`;
        }
        await route.continue({ headers });
      };
      await shopper.route("**/v1/chat/completions", forget);
      const errorsBefore = await shopper.locator(".notice.error").count();
      const before = await assistantCount(shopper);
      await say(shopper, "What is your return window?");
      await newAssistantWith(shopper, before, /return/i);
      await shopper.unroute("**/v1/chat/completions", forget);
      if (rewritten !== 1) fail(`the unknown id was sent ${rewritten} times`);
      const now = await shopper.evaluate(() => localStorage.getItem("clerk.conversation"));
      if (!now || now === known) fail("the page kept the conversation the server no longer knows");
      const errors = await shopper.locator(".notice.error").count();
      if (errors > errorsBefore) fail("the page showed an error instead of starting a new conversation");
    });

    await step("k. the one-tag widget opens the chat in an iframe", async () => {
      const page = (pages.widget = await staffCtx.newPage());
      watch(page, "widget");
      await page.setViewportSize(DESKTOP);
      // A merchant's page on another origin, with the one embed tag pointing at clerk.
      const config = await (await fetch(`${BASE}/web/config.json`)).json();
      const attr = (v) => String(v).replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;");
      const html =
        `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Merchant</title></head>` +
        `<body><h1>A merchant's shop</h1>` +
        `<script src="${attr(`${BASE}/widget.js`)}" data-key="${attr(config.widget_key || "")}" async></script></body></html>`;
      merchant = http.createServer((req, res) => {
        res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
        res.end(html);
      });
      await new Promise((resolve) => merchant.listen(0, "127.0.0.1", resolve));
      await page.goto(`http://127.0.0.1:${merchant.address().port}/`);
      const bubble = page.getByRole("button", { name: "Chat with us" });
      await bubble.click();
      const frame = page.frameLocator('iframe[src*="embed=1"]');
      await frame.getByTestId("human").waitFor();
      await frame.getByTestId("composer").waitFor();
      const globals = await page.evaluate(() => typeof window.ClerkWidget.open === "function" && typeof window.ClerkWidget.close === "function");
      if (!globals) fail("window.ClerkWidget lacks open()/close()");
      await page.evaluate(() => window.ClerkWidget.close());
      await page.locator("iframe").waitFor({ state: "hidden" });
      await page.close();
    });

    if (problems.length) {
      current = "page health";
      fail(`the pages reported errors:\n  ${problems.join("\n  ")}`);
    }
    if (consoleErrors.length) console.log(`note: browser console errors (not failures):\n  ${consoleErrors.join("\n  ")}`);
    console.log("web e2e: all steps passed");
  } catch (e) {
    console.error(`FAILED at step "${current}": ${e && e.message ? e.message : e}`);
    for (const [name, page] of Object.entries(pages)) {
      if (page && !page.isClosed()) {
        await page.screenshot({ path: path.join(OUT, `failure-${name}.png`), fullPage: true }).catch(() => {});
      }
    }
    if (problems.length) console.error(`page errors:\n  ${problems.join("\n  ")}`);
    if (consoleErrors.length) console.error(`browser console errors:\n  ${consoleErrors.join("\n  ")}`);
    console.error(`screenshots: ${OUT}`);
    process.exitCode = 1;
  } finally {
    if (merchant) merchant.close();
    await browser.close().catch(() => {});
  }
}

main().catch((e) => {
  console.error(`FAILED at step "${current}": ${e && e.message ? e.message : e}`);
  process.exitCode = 1;
});
