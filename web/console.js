// clerk: the staff console (served at `/console`). Plain browser JavaScript, no build step.
// Shop data and messages are untrusted: everything is inserted with textContent / createElement.
(() => {
  "use strict";

  const SESSION_KEY = "clerk.console";
  const QUEUE_MS = 3000;
  const HISTORY_MS = 2000;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (sel) => document.querySelector(sel);

  const state = {
    key: "",
    name: "",
    tab: "handoffs",
    handoffs: [], // open and claimed, oldest first
    queueSig: "",
    selected: null, // the selected handoff's id
    history: { conversation: null, lastId: 0, shown: new Set(), customer: null, ordersFor: null },
    timers: { queue: null, history: null },
    loading: { queue: false, history: false },
  };

  // ---------- helpers ----------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === "class") node.className = v;
        else if (k === "text") node.textContent = v;
        else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
        else node.setAttribute(k, v === true ? "" : String(v));
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === null || v === undefined) continue;
        if (k === "text") node.textContent = v;
        else node.setAttribute(k, String(v));
      }
    }
    for (const c of children) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function money(v) {
    if (v === null || v === undefined || v === "") return "—";
    if (typeof v === "number") return `$${v.toFixed(2)}`;
    return String(v);
  }

  function pct(v) {
    if (typeof v !== "number" || !isFinite(v)) return "—";
    return `${Math.round(v * 1000) / 10}%`;
  }

  const rtf = typeof Intl !== "undefined" && Intl.RelativeTimeFormat ? new Intl.RelativeTimeFormat("en", { numeric: "auto" }) : null;

  function age(unix) {
    if (typeof unix !== "number") return "";
    const secs = Math.max(0, Math.round(Date.now() / 1000 - unix));
    const [n, unit] =
      secs < 60 ? [secs, "second"] : secs < 3600 ? [Math.floor(secs / 60), "minute"] : secs < 86400 ? [Math.floor(secs / 3600), "hour"] : [Math.floor(secs / 86400), "day"];
    if (unit === "second" && secs < 10) return "just now";
    return rtf ? rtf.format(-n, unit) : `${n} ${unit}${n === 1 ? "" : "s"} ago`;
  }

  function when(unix) {
    if (typeof unix !== "number") return "";
    return new Date(unix * 1000).toLocaleString();
  }

  function badgeClass(value) {
    const s = String(value || "").toLowerCase();
    if (["delivered", "resolved", "positive", "low", "approved", "claimed"].includes(s)) return "badge ok";
    if (["cancelled", "high", "negative", "rejected"].includes(s)) return "badge bad";
    if (["medium", "open", "pending", "neutral"].includes(s) || s.includes("requested") || s.includes("modified")) return "badge warn";
    return "badge info";
  }

  function badge(text, cls) {
    return el("span", { class: cls || badgeClass(text), text: String(text) });
  }

  async function errorMessage(res) {
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) {
      /* not JSON */
    }
    return `${res.status} ${res.statusText || "error"}`;
  }

  async function api(method, path, body) {
    const headers = {};
    if (state.key) headers.Authorization = `Bearer ${state.key}`;
    if (state.name) headers["X-Clerk-Staff"] = state.name;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    if (!res.ok) {
      const err = new Error(await errorMessage(res));
      err.status = res.status;
      throw err;
    }
    return res.json();
  }

  function showError(e) {
    const p = $("#app-error");
    p.textContent = e ? (e.message || String(e)) : "";
    // The key stopped working (revoked, or the server restarted with other keys): sign in again.
    if (e && e.status === 401) signOut(e.message);
  }

  // ---------- sign in ----------

  function saveSession() {
    try {
      sessionStorage.setItem(SESSION_KEY, JSON.stringify({ key: state.key, name: state.name }));
    } catch (_) {
      /* private mode: stay signed in for this page only */
    }
  }

  function loadSession() {
    try {
      const raw = sessionStorage.getItem(SESSION_KEY);
      return raw ? JSON.parse(raw) : null;
    } catch (_) {
      return null;
    }
  }

  async function signIn(key, name) {
    state.key = key;
    state.name = name;
    await api("GET", "/v1/shop/handoffs?status=open&limit=1");
    saveSession();
    showApp();
  }

  function signOut(message) {
    try {
      sessionStorage.removeItem(SESSION_KEY);
    } catch (_) {
      /* ignore */
    }
    stopTimers();
    state.key = "";
    state.selected = null;
    $("#app-view").hidden = true;
    $("#signin-view").hidden = false;
    $("#whoami").hidden = true;
    $("#sign-out").hidden = true;
    $("#signin-error").textContent = message || "";
    $("#key").value = "";
    $("#key").focus();
  }

  function showApp() {
    $("#signin-view").hidden = true;
    $("#app-view").hidden = false;
    $("#whoami").hidden = false;
    $("#whoami").textContent = `Signed in as ${state.name}`;
    $("#sign-out").hidden = false;
    selectTab(state.tab || "handoffs", false);
  }

  // ---------- tabs ----------

  const TABS = ["handoffs", "inbox", "knowledge", "analytics"];

  function selectTab(name, focus) {
    state.tab = name;
    for (const t of TABS) {
      const tab = $(`#tab-${t}`);
      const on = t === name;
      tab.setAttribute("aria-selected", String(on));
      tab.tabIndex = on ? 0 : -1;
      $(`#panel-${t}`).hidden = !on;
      if (on && focus) tab.focus();
    }
    showError(null);
    stopTimers();
    if (name === "handoffs") {
      refreshQueue();
      state.timers.queue = setInterval(refreshQueue, QUEUE_MS);
      if (state.selected !== null) {
        refreshHistory();
        state.timers.history = setInterval(refreshHistory, HISTORY_MS);
      }
    } else {
      // Keep the tab's badge count fresh even while elsewhere.
      state.timers.queue = setInterval(refreshQueue, QUEUE_MS);
      if (name === "inbox") loadInbox();
      else if (name === "knowledge") loadKnowledge();
      else if (name === "analytics") loadAnalytics();
    }
  }

  function stopTimers() {
    clearInterval(state.timers.queue);
    clearInterval(state.timers.history);
    state.timers.queue = state.timers.history = null;
  }

  // ---------- handoffs ----------

  async function refreshQueue() {
    if (state.loading.queue) return;
    state.loading.queue = true;
    try {
      const [open, claimed] = await Promise.all([
        api("GET", "/v1/shop/handoffs?status=open&limit=100"),
        api("GET", "/v1/shop/handoffs?status=claimed&limit=100"),
      ]);
      const rows = [...(open.data || []), ...(claimed.data || [])];
      rows.sort((a, b) => (a.status === b.status ? a.created_at - b.created_at || a.id - b.id : a.status === "open" ? -1 : 1));
      state.handoffs = rows;
      renderQueue();
      updateDetailStatus();
      $("#app-error").textContent = "";
    } catch (e) {
      showError(e);
    } finally {
      state.loading.queue = false;
    }
  }

  function renderQueue() {
    const rows = state.handoffs;
    const count = $("#queue-count");
    const waiting = rows.filter((h) => h.status === "open").length;
    count.hidden = waiting === 0;
    count.textContent = String(waiting);
    count.setAttribute("aria-label", `${waiting} waiting`);
    $("#queue-empty").hidden = rows.length > 0;

    const sig = rows.map((h) => `${h.id}:${h.status}:${h.claimed_by || ""}:${h.updated_at}`).join("|") + `#${state.selected}`;
    const list = $("#queue");
    if (sig === state.queueSig) {
      for (const li of list.children) {
        const h = rows.find((r) => String(r.id) === li.dataset.id);
        const a = li.querySelector(".age");
        if (h && a) a.textContent = age(h.created_at);
      }
      return;
    }
    state.queueSig = sig;
    const focusedId = document.activeElement && list.contains(document.activeElement) ? document.activeElement.closest("li")?.dataset.id : null;
    const focusedClaim = focusedId && document.activeElement.dataset.testid === "claim";
    clear(list);
    for (const h of rows) {
      const li = el("li", {
        class: `handoff-row${h.id === state.selected ? " selected" : ""}`,
        "data-testid": "handoff",
        "data-id": h.id,
        "data-conversation": h.conversation_id,
        "data-status": h.status,
      });
      const meta = el("span", { class: "meta" }, badge(h.status), el("span", { class: "age", text: age(h.created_at) }));
      if (h.claimed_by) meta.append(el("span", { text: `· ${h.claimed_by}` }));
      if (h.customer_id) meta.append(el("span", { text: `· ${h.customer_id}` }));
      const open = el(
        "button",
        { type: "button", class: "open-btn", "aria-current": h.id === state.selected ? "true" : null },
        el("span", { class: "reason", text: h.reason || "Handoff" }),
        el("span", { class: "summary", text: h.summary || "" }),
        meta,
      );
      li.append(open);
      if (h.status === "open") {
        li.append(el("button", { type: "button", class: "small primary", "data-testid": "claim", text: "Claim", "aria-label": `Claim: ${h.reason || "handoff"}` }));
      }
      li.addEventListener("click", (ev) => {
        const claimBtn = ev.target.closest('[data-testid="claim"]');
        if (claimBtn) claim(h.id);
        else select(h.id);
      });
      list.append(li);
    }
    if (focusedId) {
      const li = [...list.children].find((n) => n.dataset.id === focusedId);
      const target = li && (focusedClaim ? li.querySelector('[data-testid="claim"]') : null);
      (target || (li && li.querySelector(".open-btn")) || list).focus?.();
    }
  }

  function selectedHandoff() {
    return state.handoffs.find((h) => h.id === state.selected) || null;
  }

  async function claim(id) {
    try {
      await api("POST", `/v1/shop/handoffs/${id}/claim`);
      const h = state.handoffs.find((x) => x.id === id);
      if (h) {
        h.status = "claimed";
        h.claimed_by = state.name;
      }
      await select(id);
      await refreshQueue();
      $("#reply").focus();
    } catch (e) {
      showError(e);
    }
  }

  async function select(id) {
    const changed = state.selected !== id;
    state.selected = id;
    state.queueSig = "";
    renderQueue();
    if (changed) {
      state.history = { conversation: null, lastId: 0, shown: new Set(), customer: null, ordersFor: null };
      clear($("#history"));
      clear($("#orders-body"));
      $("#detail-orders").hidden = true;
    }
    renderDetail();
    clearInterval(state.timers.history);
    await refreshHistory();
    if (state.tab === "handoffs") state.timers.history = setInterval(refreshHistory, HISTORY_MS);
  }

  function renderDetail() {
    const h = selectedHandoff();
    $("#detail-empty").hidden = !!h;
    $("#detail-body").hidden = !h;
    if (!h) return;
    $("#detail-title").textContent = h.reason || "Handoff";
    $("#detail-summary").textContent = h.summary || "";
    const facts = $("#detail-facts");
    clear(facts);
    const add = (k, v) => {
      if (v === null || v === undefined || v === "") return;
      facts.append(el("dt", { text: k }), el("dd", { text: String(v) }));
    };
    add("Handoff", `#${h.id}`);
    add("Waiting since", `${when(h.created_at)} (${age(h.created_at)})`);
    add("Claimed by", h.claimed_by);
    add("Customer", h.customer_id || state.history.customer);
    add("Conversation", h.conversation_id);
    updateDetailStatus();
  }

  function updateDetailStatus() {
    if (state.selected === null) return;
    const h = selectedHandoff();
    if (!h) {
      // Closed (by us or a colleague): it left the queue.
      $("#detail-status").className = "badge";
      $("#detail-status").textContent = "closed";
      setReplyEnabled(false, "This handoff is closed.");
      $("#detail-claim").hidden = true;
      $("#detail-close").disabled = true;
      return;
    }
    const st = $("#detail-status");
    st.className = badgeClass(h.status);
    st.textContent = h.claimed_by ? `${h.status} by ${h.claimed_by}` : h.status;
    $("#detail-close").disabled = false;
    $("#detail-claim").hidden = h.status !== "open";
    if (h.status === "claimed") setReplyEnabled(true, h.claimed_by && h.claimed_by !== state.name ? `Claimed by ${h.claimed_by}.` : "");
    else setReplyEnabled(false, "Claim the handoff to reply.");
  }

  function setReplyEnabled(on, hint) {
    $("#reply").disabled = !on;
    $("#reply-send").disabled = !on;
    $("#reply-hint").textContent = hint || "";
  }

  async function refreshHistory() {
    const h = selectedHandoff();
    if (!h || state.loading.history) return;
    state.loading.history = true;
    const hist = state.history;
    try {
      const cid = h.conversation_id;
      if (hist.conversation !== cid) {
        hist.conversation = cid;
        hist.lastId = 0;
        hist.shown = new Set();
        clear($("#history"));
      }
      const r = await api("GET", `/v1/shop/conversations/${encodeURIComponent(cid)}/messages?after=${hist.lastId}`);
      if (state.selected !== h.id || hist !== state.history) return;
      const box = $("#history");
      const atBottom = hist.lastId === 0 || box.scrollHeight - box.scrollTop - box.clientHeight < 60;
      for (const m of r.data || []) {
        if (hist.shown.has(m.id)) continue;
        hist.shown.add(m.id);
        if (m.id > hist.lastId) hist.lastId = m.id;
        if (m.role === "assistant" && !m.content) continue; // silent while staff hold it
        box.append(historyMessage(m));
      }
      if (atBottom) box.scrollTop = box.scrollHeight;
      const customer = h.customer_id || (r.conversation && r.conversation.customer_id) || null;
      if (customer && hist.customer !== customer) {
        hist.customer = customer;
        renderDetail();
      }
      if (customer && hist.ordersFor !== customer) {
        hist.ordersFor = customer;
        loadOrders(customer);
      }
    } catch (e) {
      showError(e);
    } finally {
      state.loading.history = false;
    }
  }

  function historyMessage(m) {
    const who =
      m.role === "staff" ? `${m.author || "Staff"} (staff)` : m.role === "shopper" ? "Customer" : m.role === "assistant" ? "Assistant" : m.role;
    const node = el(
      "div",
      { class: "msg", "data-role": m.role, "data-id": m.id },
      el("div", { class: "who" }, `${who} · `, el("time", { datetime: new Date(m.created_at * 1000).toISOString(), text: age(m.created_at) })),
      el("div", { class: "bubble", text: m.content }),
    );
    const meta = m.meta || null;
    if (meta && Array.isArray(meta.cards) && meta.cards.length) {
      const notes = meta.cards.map((c) => (c.type === "order" ? `${c.order_id} ${c.status} ${c.total || ""}` : `${c.name} ${c.price || ""}`));
      node.append(el("div", { class: "who", text: `Cards: ${notes.join("; ")}` }));
    }
    if (meta && meta.intent) node.append(el("div", { class: "who", text: `Intent: ${meta.intent}` }));
    return node;
  }

  async function loadOrders(customer) {
    try {
      const r = await api("GET", `/v1/shop/orders?customer_id=${encodeURIComponent(customer)}&limit=100`);
      if (state.history.ordersFor !== customer) return;
      const body = $("#orders-body");
      clear(body);
      for (const o of r.data || []) {
        body.append(
          el(
            "tr",
            { "data-testid": "customer-order" },
            el("td", { text: o.id }),
            el("td", null, badge(o.status)),
            el("td", { class: "num", text: typeof o.items === "number" ? o.items : Array.isArray(o.items) ? o.items.length : "" }),
            el("td", { class: "num", text: o.total !== undefined ? money(o.total) : "" }),
          ),
        );
      }
      if (!body.childElementCount) body.append(el("tr", null, el("td", { colspan: "4", class: "muted", text: "No orders." })));
      $("#detail-orders").hidden = false;
    } catch (e) {
      showError(e);
    }
  }

  async function sendReply(ev) {
    ev.preventDefault();
    const h = selectedHandoff();
    const text = $("#reply").value.trim();
    if (!h || !text) return;
    $("#reply-send").disabled = true;
    try {
      await api("POST", `/v1/shop/handoffs/${h.id}/reply`, { text });
      $("#reply").value = "";
      await refreshHistory();
      $("#history").scrollTop = $("#history").scrollHeight;
    } catch (e) {
      showError(e);
    } finally {
      updateDetailStatus();
    }
  }

  async function closeHandoff() {
    const h = selectedHandoff();
    if (!h) return;
    if (!confirm("Close this handoff? The assistant takes the conversation back.")) return;
    try {
      await api("POST", `/v1/shop/handoffs/${h.id}/close`);
      state.selected = null;
      clearInterval(state.timers.history);
      state.timers.history = null;
      $("#detail-empty").hidden = false;
      $("#detail-body").hidden = true;
      state.queueSig = "";
      await refreshQueue();
    } catch (e) {
      showError(e);
    }
  }

  // ---------- inbox ----------

  const inbox = { complaints: [], queues: new Set() };

  async function loadInbox() {
    await Promise.all([loadCorrections(), loadComplaints(), loadFeedback()]);
  }

  async function loadCorrections() {
    const list = $("#corrections");
    try {
      const r = await api("GET", "/v1/assistant/ratings?status=pending&limit=100");
      clear(list);
      for (const rating of r.data || []) list.append(correctionItem(rating));
      $("#corrections-empty").hidden = list.childElementCount > 0;
    } catch (e) {
      showError(e);
    }
  }

  function correctionItem(r) {
    const id = `curate-${r.id}`;
    const area = el("textarea", { id, rows: "3", "data-testid": "approve-text" });
    area.value = r.correction || "";
    const status = el("span", { class: "muted", role: "status" });
    const approve = el("button", { type: "button", class: "primary small", "data-testid": "approve", text: "Approve" });
    const reject = el("button", { type: "button", class: "small", "data-testid": "reject", text: "Reject" });
    const li = el(
      "li",
      { "data-testid": "correction-item", "data-id": r.id },
      el(
        "dl",
        { class: "kv" },
        el("dt", { text: "Question" }),
        el("dd", { text: r.question || "" }),
        el("dt", { text: "Assistant said" }),
        el("dd", { class: "passage", text: r.answer || "" }),
        el("dt", { text: "Shopper suggests" }),
        el("dd", { text: r.correction || "" }),
        el("dt", { text: "When" }),
        el("dd", { text: age(r.created_at) }),
      ),
      el("div", { class: "field" }, el("label", { for: id, text: "Answer to give from now on (edit if needed)" }), area),
      el("div", { class: "actions" }, approve, reject, status),
    );
    const act = async (step) => {
      approve.disabled = reject.disabled = area.disabled = true;
      try {
        const body = step === "approve" ? { answer: area.value.trim() || undefined } : {};
        await api("POST", `/v1/assistant/ratings/${r.id}/${step}`, body);
        status.className = step === "approve" ? "ok" : "muted";
        status.textContent = step === "approve" ? "Approved: the assistant will use this answer." : "Rejected.";
        li.dataset.status = step === "approve" ? "approved" : "rejected";
      } catch (e) {
        status.className = "error";
        status.textContent = e.message;
        approve.disabled = reject.disabled = area.disabled = false;
      }
    };
    approve.addEventListener("click", () => act("approve"));
    reject.addEventListener("click", () => act("reject"));
    return li;
  }

  async function loadComplaints() {
    try {
      const r = await api("GET", "/v1/shop/complaints?limit=100");
      inbox.complaints = r.data || [];
      const sel = $("#complaint-category");
      const current = sel.value;
      const cats = [...new Set(inbox.complaints.map((c) => c.category).filter(Boolean))].sort();
      clear(sel);
      sel.append(el("option", { value: "", text: "All categories" }));
      for (const c of cats) sel.append(el("option", { value: c, text: label(c) }));
      sel.value = cats.includes(current) ? current : "";
      renderComplaints();
    } catch (e) {
      showError(e);
    }
  }

  function label(s) {
    return String(s || "").replace(/_/g, " ");
  }

  function renderComplaints() {
    const box = $("#complaints");
    clear(box);
    const cat = $("#complaint-category").value;
    const status = $("#complaint-status").value;
    const rows = inbox.complaints.filter((c) => (!cat || c.category === cat) && (!status || (c.status || "open") === status));
    if (!rows.length) {
      box.append(el("p", { class: "muted", text: "No complaints here." }));
      return;
    }
    const groups = new Map();
    for (const c of rows) {
      const k = c.category || "other";
      if (!groups.has(k)) groups.set(k, []);
      groups.get(k).push(c);
    }
    for (const [k, items] of groups) {
      box.append(el("h3", { text: `${label(k)} (${items.length})` }));
      const ul = el("ul", { class: "list" });
      for (const c of items) ul.append(complaintItem(c));
      box.append(ul);
    }
  }

  function complaintItem(c) {
    const st = c.status || "open";
    const li = el(
      "li",
      { "data-testid": "complaint", "data-id": c.id },
      el(
        "div",
        { class: "actions" },
        badge(c.severity || "low"),
        badge(st),
        c.order_id ? el("span", { class: "badge", text: c.order_id }) : null,
        c.auto_approved ? el("span", { class: "badge ok", text: "auto-approved" }) : null,
        el("span", { class: "muted", text: age(c.created_at) }),
      ),
      el("p", { class: "passage", text: c.text || "" }),
      el("p", { class: "muted" }, el("strong", { text: `Suggested: ${label(c.resolution)}` }), c.resolution_note ? ` — ${c.resolution_note}` : ""),
    );
    if (c.customer_id) li.append(el("p", { class: "muted", text: `Customer ${c.customer_id}` }));
    if (st === "resolved") {
      li.append(el("p", { class: "ok", text: `Resolved${c.resolved_by ? ` by ${c.resolved_by}` : ""}${c.resolved_at ? `, ${age(c.resolved_at)}` : ""}.` }));
    } else {
      const btn = el("button", { type: "button", class: "small", "data-testid": "resolve", text: "Mark resolved" });
      btn.addEventListener("click", async () => {
        btn.disabled = true;
        try {
          const updated = await api("POST", `/v1/shop/complaints/${c.id}/resolve`, {});
          const i = inbox.complaints.findIndex((x) => x.id === c.id);
          if (i >= 0) inbox.complaints[i] = Object.assign({}, c, updated && updated.id ? updated : { status: "resolved" });
          renderComplaints();
        } catch (e) {
          btn.disabled = false;
          showError(e);
        }
      });
      li.append(el("div", { class: "actions" }, btn));
    }
    return li;
  }

  async function loadFeedback() {
    const sel = $("#feedback-queue");
    const queue = sel.value;
    try {
      const r = await api("GET", `/v1/shop/feedback?limit=100${queue ? `&queue=${encodeURIComponent(queue)}` : ""}`);
      const rows = r.data || [];
      for (const f of rows) if (f.queue) inbox.queues.add(f.queue);
      const known = [...inbox.queues].sort();
      clear(sel);
      sel.append(el("option", { value: "", text: "All departments" }));
      for (const q of known) sel.append(el("option", { value: q, text: label(q) }));
      sel.value = queue;
      const box = $("#feedback");
      clear(box);
      if (!rows.length) {
        box.append(el("p", { class: "muted", text: "No feedback here." }));
        return;
      }
      const ul = el("ul", { class: "list" });
      for (const f of rows) {
        ul.append(
          el(
            "li",
            { "data-testid": "feedback", "data-id": f.id },
            el(
              "div",
              { class: "actions" },
              badge(f.sentiment || "neutral"),
              el("span", { class: "badge info", text: label(f.topic) }),
              el("span", { class: "badge", text: `→ ${label(f.queue)}` }),
              typeof f.rating === "number" ? el("span", { "aria-label": `${f.rating} of 5 stars`, text: "★".repeat(f.rating) + "☆".repeat(Math.max(0, 5 - f.rating)) }) : null,
              el("span", { class: "muted", text: age(f.created_at) }),
            ),
            el("p", { class: "passage", text: f.text || "" }),
          ),
        );
      }
      box.append(ul);
    } catch (e) {
      showError(e);
    }
  }

  // ---------- knowledge ----------

  async function loadKnowledge() {
    await Promise.all([loadDocuments(), loadCurated()]);
  }

  async function loadDocuments() {
    try {
      const r = await api("GET", "/v1/knowledge/documents");
      const body = $("#docs-body");
      clear(body);
      const docs = (r.data || []).slice().sort((a, b) => String(a.id).localeCompare(String(b.id)));
      for (const d of docs) {
        const del = el("button", { type: "button", class: "small danger", "data-testid": "doc-delete", text: "Delete", "aria-label": `Delete ${d.id}` });
        del.addEventListener("click", async () => {
          if (!confirm(`Delete “${d.id}” from the knowledge base? The assistant stops citing it.`)) return;
          del.disabled = true;
          try {
            await api("DELETE", `/v1/knowledge/documents/${encodeURIComponent(d.id)}`);
            await loadDocuments();
          } catch (e) {
            del.disabled = false;
            showError(e);
          }
        });
        body.append(
          el(
            "tr",
            { "data-testid": "document", "data-id": d.id },
            el("td", null, el("div", { text: d.id }), d.source && d.source !== d.id ? el("div", { class: "muted", text: d.source }) : null),
            el("td", { text: (d.kinds || []).join(", ") }),
            el("td", { class: "num", text: d.chunks }),
            el("td", { text: d.ingested_at ? new Date(d.ingested_at * 1000).toLocaleDateString() : "" }),
            el("td", null, del),
          ),
        );
      }
      if (!docs.length) body.append(el("tr", null, el("td", { colspan: "5", class: "muted", text: "No documents yet." })));
      const n = typeof r.documents === "number" ? r.documents : docs.length;
      $("#docs-meta").textContent = `${n} document${n === 1 ? "" : "s"}${typeof r.chunks === "number" ? `, ${r.chunks} passages` : ""}`;
    } catch (e) {
      showError(e);
    }
  }

  async function upload(ev) {
    ev.preventDefault();
    const files = [...($("#upload-file").files || [])];
    const status = $("#upload-status");
    if (!files.length) {
      status.className = "error";
      status.textContent = "Choose a file first.";
      return;
    }
    const kind = $("#upload-kind").value;
    const button = ev.target.querySelector('[type="submit"]');
    button.disabled = true;
    status.className = "muted";
    status.textContent = "Uploading…";
    try {
      const documents = [];
      for (const f of files) {
        const doc = { name: f.name, content: await f.text() };
        if (kind) doc.kind = kind;
        documents.push(doc);
      }
      const r = await api("POST", "/v1/knowledge/documents", documents.length === 1 ? documents[0] : { documents });
      const parts = [];
      if (r.added && r.added.length) parts.push(`added ${r.added.join(", ")}`);
      if (r.replaced && r.replaced.length) parts.push(`replaced ${r.replaced.join(", ")}`);
      if (r.unchanged && r.unchanged.length) parts.push(`unchanged ${r.unchanged.join(", ")}`);
      status.className = "ok";
      status.textContent = `Done: ${parts.join("; ") || "nothing changed"} (${r.chunks ?? "?"} passages).`;
      $("#upload-file").value = "";
      await loadDocuments();
    } catch (e) {
      status.className = "error";
      status.textContent = e.message;
    } finally {
      button.disabled = false;
    }
  }

  async function search(ev) {
    ev.preventDefault();
    const q = $("#search-q").value.trim();
    const list = $("#search-results");
    const meta = $("#search-meta");
    clear(list);
    if (!q) return;
    meta.textContent = "Searching…";
    try {
      const r = await api("GET", `/v1/knowledge/search?q=${encodeURIComponent(q)}&limit=5`);
      const hits = r.data || [];
      meta.textContent =
        `${hits.length} passage${hits.length === 1 ? "" : "s"}` +
        (typeof r.took_ms === "number" ? ` in ${r.took_ms.toFixed(1)} ms` : "") +
        (r.answerable === false ? " — nothing close enough: the assistant would say it doesn't know." : "");
      for (const h of hits) {
        list.append(
          el(
            "li",
            { "data-testid": "search-hit" },
            el(
              "div",
              { class: "actions" },
              el("strong", { text: h.title || h.document_id }),
              el("span", { class: "badge info", text: h.kind || "" }),
              el("span", { class: "muted", text: `score ${typeof h.score === "number" ? h.score.toFixed(3) : h.score}` }),
              typeof h.similarity === "number" ? el("span", { class: "muted", text: `similarity ${h.similarity.toFixed(3)}` }) : null,
            ),
            el("div", { class: "muted", text: [h.document_id, h.source && h.source.locator].filter(Boolean).join(" · ") }),
            el("p", { class: "passage", text: h.passage || "" }),
          ),
        );
      }
    } catch (e) {
      meta.textContent = "";
      showError(e);
    }
  }

  async function loadCurated() {
    const list = $("#curated");
    try {
      const r = await api("GET", "/v1/assistant/curated");
      clear(list);
      for (const c of r.data || []) {
        const del = el("button", { type: "button", class: "small danger", text: "Remove", "aria-label": `Remove the curated answer to: ${c.question}` });
        del.addEventListener("click", async () => {
          if (!confirm("Remove this curated answer?")) return;
          del.disabled = true;
          try {
            await api("DELETE", `/v1/assistant/curated/${c.id}`);
            await loadCurated();
          } catch (e) {
            del.disabled = false;
            showError(e);
          }
        });
        list.append(
          el(
            "li",
            { "data-testid": "curated", "data-id": c.id },
            el("dl", { class: "kv" }, el("dt", { text: "Question" }), el("dd", { text: c.question }), el("dt", { text: "Answer" }), el("dd", { class: "passage", text: c.answer })),
            el("div", { class: "actions" }, el("span", { class: "muted grow", text: `by ${c.created_by || "staff"}, ${age(c.created_at)}` }), del),
          ),
        );
      }
      $("#curated-empty").hidden = list.childElementCount > 0;
    } catch (e) {
      showError(e);
    }
  }

  // ---------- analytics ----------

  function chartBox(title, wide) {
    const h = el("h3", { text: title });
    return el("figure", { class: `box chart${wide ? " wide" : ""}` }, h);
  }

  function svgRoot(w, h, title, desc) {
    const id = `c${Math.random().toString(36).slice(2, 9)}`;
    const root = svg("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-labelledby": `${id}-t ${id}-d`, preserveAspectRatio: "xMidYMid meet" });
    root.append(svg("title", { id: `${id}-t`, text: title }), svg("desc", { id: `${id}-d`, text: desc }));
    return root;
  }

  /** The top of a count axis with 4 whole-number ticks. */
  function niceMax(v) {
    const raw = Math.max(1, v) / 4;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 5, 10]) if (raw <= m * p) return Math.max(1, m * p) * 4;
    return 40 * p;
  }

  function dayChart(days) {
    const W = 720;
    const H = 240;
    const pad = { l: 36, r: 8, t: 10, b: 30 };
    const max = niceMax(Math.max(1, ...days.map((d) => Math.max(d.conversations || 0, d.handoffs || 0))));
    const desc = days.map((d) => `${d.date}: ${d.conversations} conversations, ${d.handoffs} handoffs`).join("; ") || "No data.";
    const root = svgRoot(W, H, "Conversations and handoffs per day", desc);
    const iw = W - pad.l - pad.r;
    const ih = H - pad.t - pad.b;
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      const y = pad.t + ih - (ih * i) / 4;
      root.append(svg("line", { class: "axis", x1: pad.l, x2: W - pad.r, y1: y, y2: y }));
      root.append(svg("text", { x: pad.l - 6, y: y + 4, "text-anchor": "end", text: Number.isInteger(v) ? v : v.toFixed(1) }));
    }
    const n = Math.max(1, days.length);
    const slot = iw / n;
    const bw = Math.max(2, Math.min(18, slot * 0.36));
    const every = Math.ceil(n / 10);
    days.forEach((d, i) => {
      const x0 = pad.l + slot * i + slot / 2;
      const h1 = (ih * (d.conversations || 0)) / max;
      const h2 = (ih * (d.handoffs || 0)) / max;
      const b1 = svg("rect", { class: "s1", x: x0 - bw - 1, y: pad.t + ih - h1, width: bw, height: Math.max(0, h1), rx: 2 });
      b1.append(svg("title", { text: `${d.date}: ${d.conversations} conversations` }));
      const b2 = svg("rect", { class: "s2", x: x0 + 1, y: pad.t + ih - h2, width: bw, height: Math.max(0, h2), rx: 2 });
      b2.append(svg("title", { text: `${d.date}: ${d.handoffs} handoffs` }));
      root.append(b1, b2);
      if (i % every === 0 || i === n - 1) root.append(svg("text", { x: x0, y: H - 10, "text-anchor": "middle", text: String(d.date || "").slice(5) }));
    });
    return root;
  }

  function legend(items) {
    return el(
      "div",
      { class: "legend", "aria-hidden": "true" },
      ...items.map(([cls, text]) => el("span", null, el("span", { class: `sw ${cls}` }), text)),
    );
  }

  /** Horizontal bars with the label above each bar (reads on a phone). */
  function hbars(rows, title, cls) {
    const W = 360;
    const rowH = 38;
    const H = Math.max(1, rows.length) * rowH + 4;
    const max = Math.max(1, ...rows.map((r) => r.count));
    const desc = rows.map((r) => `${r.label}: ${r.count}`).join("; ") || "No data.";
    const root = svgRoot(W, H, title, desc);
    if (!rows.length) {
      root.setAttribute("viewBox", `0 0 ${W} 30`);
      root.append(svg("text", { x: 0, y: 18, text: "No data yet." }));
      return root;
    }
    rows.forEach((r, i) => {
      const y = i * rowH;
      const label = r.label.length > 56 ? `${r.label.slice(0, 55)}…` : r.label;
      root.append(svg("text", { x: 0, y: y + 13, text: label }));
      root.append(svg("rect", { class: "track", x: 0, y: y + 18, width: W - 40, height: 12, rx: 3 }));
      const bar = svg("rect", { class: r.cls || cls || "s1", x: 0, y: y + 18, width: Math.max(2, ((W - 40) * r.count) / max), height: 12, rx: 3 });
      bar.append(svg("title", { text: `${r.label}: ${r.count}` }));
      root.append(bar);
      root.append(svg("text", { class: "value", x: W - 34, y: y + 29, text: r.count }));
    });
    return root;
  }

  function gauge(value, title) {
    const W = 160;
    const H = 100;
    const v = typeof value === "number" && isFinite(value) ? Math.max(0, Math.min(1, value)) : 0;
    const root = svgRoot(W, H, title, `${title}: ${pct(value)}`);
    root.classList.add("gauge");
    const cx = 80;
    const cy = 84;
    const r = 64;
    const arc = (from, to) => {
      const a0 = Math.PI * (1 - from);
      const a1 = Math.PI * (1 - to);
      const x0 = cx + r * Math.cos(a0);
      const y0 = cy - r * Math.sin(a0);
      const x1 = cx + r * Math.cos(a1);
      const y1 = cy - r * Math.sin(a1);
      return `M ${x0.toFixed(2)} ${y0.toFixed(2)} A ${r} ${r} 0 0 1 ${x1.toFixed(2)} ${y1.toFixed(2)}`;
    };
    root.append(svg("path", { class: "gauge-track", d: arc(0, 1) }));
    if (v > 0) root.append(svg("path", { class: "gauge-value", d: arc(0, v) }));
    root.append(svg("text", { class: "value big", x: cx, y: cy - 6, "text-anchor": "middle", text: pct(value) }));
    return root;
  }

  function vbars(rows, title, unit) {
    const W = 360;
    const H = 200;
    const pad = { l: 8, r: 8, t: 22, b: 26 };
    const vals = rows.map((r) => (typeof r.value === "number" ? r.value : 0));
    const max = Math.max(1, ...vals) * 1.05;
    const desc = rows.map((r) => `${r.label}: ${typeof r.value === "number" ? `${Math.round(r.value)} ${unit}` : "no data"}`).join("; ");
    const root = svgRoot(W, H, title, desc);
    const ih = H - pad.t - pad.b;
    const slot = (W - pad.l - pad.r) / rows.length;
    const bw = Math.min(70, slot * 0.55);
    root.append(svg("line", { class: "axis", x1: pad.l, x2: W - pad.r, y1: pad.t + ih, y2: pad.t + ih }));
    rows.forEach((r, i) => {
      const x = pad.l + slot * i + slot / 2;
      const has = typeof r.value === "number";
      const h = has ? (ih * r.value) / max : 0;
      const bar = svg("rect", { class: "s1", x: x - bw / 2, y: pad.t + ih - h, width: bw, height: Math.max(0, h), rx: 3 });
      bar.append(svg("title", { text: `${r.label}: ${has ? Math.round(r.value) + " " + unit : "no data"}` }));
      root.append(bar);
      root.append(svg("text", { class: "value", x, y: pad.t + ih - h - 6, "text-anchor": "middle", text: has ? `${Math.round(r.value)} ${unit}` : "—" }));
      root.append(svg("text", { x, y: H - 8, "text-anchor": "middle", text: r.label }));
    });
    return root;
  }

  function counted(rows, key) {
    return (rows || []).map((r) => ({ label: String(r[key] ?? r.label ?? r.reason ?? r.intent ?? r.question ?? ""), count: Number(r.count) || 0 }));
  }

  async function loadAnalytics() {
    const box = $("#analytics");
    const days = $("#analytics-days").value || "14";
    box.setAttribute("aria-busy", "true");
    try {
      const a = await api("GET", `/v1/analytics?days=${encodeURIComponent(days)}`);
      clear(box);

      const perDay = chartBox(`Conversations per day (last ${days} days)`, true);
      perDay.append(legend([["s1", "Conversations"], ["s2", "Handed to a person"]]), dayChart(a.days || []));
      box.append(perDay);

      const rates = chartBox("Resolution");
      const g = el("div", { class: "big-numbers" });
      g.append(
        el("div", { class: "big-number" }, gauge(a.resolved_without_human, "Resolved without a human"), el("div", { class: "label", text: "Resolved without a human" })),
        el("div", { class: "big-number" }, gauge(a.handoff_rate, "Handoff rate"), el("div", { class: "label", text: "Handed to a person" })),
        el("div", { class: "big-number" }, el("div", { class: "value", text: String(a.conversations ?? 0) }), el("div", { class: "label", text: "Conversations" })),
      );
      rates.append(g);
      box.append(rates);

      const ratings = a.ratings || { up: 0, down: 0 };
      const rt = chartBox("Answer ratings");
      rt.append(
        hbars(
          [
            { label: "Helpful (thumbs up)", count: ratings.up || 0, cls: "up" },
            { label: "Not helpful (thumbs down)", count: ratings.down || 0, cls: "down" },
          ],
          "Answer ratings",
        ),
      );
      box.append(rt);

      const reasons = chartBox("Why conversations were handed over");
      reasons.append(hbars(counted(a.handoff_reasons, "reason"), "Handoff reasons", "s2"));
      box.append(reasons);

      const intents = chartBox("Top intents");
      intents.append(hbars(counted(a.top_intents, "intent"), "Top intents", "s1"));
      box.append(intents);

      const lat = a.latency_ms || {};
      const latency = chartBox(`Reply latency${typeof lat.count === "number" ? ` (${lat.count} replies)` : ""}`);
      latency.append(
        vbars(
          [
            { label: "p50", value: lat.p50 },
            { label: "p90", value: lat.p90 },
            { label: "p99", value: lat.p99 },
          ],
          "Reply latency percentiles",
          "ms",
        ),
      );
      box.append(latency);

      const un = chartBox("Questions the assistant couldn't answer", true);
      const rows = counted(a.unanswered, "question");
      if (rows.length) {
        const table = el(
          "table",
          null,
          el("thead", null, el("tr", null, el("th", { scope: "col", text: "Question" }), el("th", { scope: "col", class: "num", text: "Times asked" }))),
        );
        const tb = el("tbody");
        for (const r of rows) tb.append(el("tr", null, el("td", { text: r.label }), el("td", { class: "num", text: r.count })));
        table.append(tb);
        un.append(el("div", { class: "table-wrap" }, table));
      } else {
        un.append(el("p", { class: "muted", text: "None — every question found an answer." }));
      }
      box.append(un);
    } catch (e) {
      clear(box);
      box.append(el("p", { class: "error", text: e.message }));
      showError(e);
    } finally {
      box.removeAttribute("aria-busy");
    }
  }

  // ---------- start ----------

  async function loadShopName() {
    try {
      const res = await fetch("/web/config.json", { cache: "no-store" });
      if (!res.ok) return;
      const c = await res.json();
      if (c && typeof c.shop_name === "string" && c.shop_name) {
        $("#shop-name").textContent = c.shop_name;
        document.title = `${c.shop_name} · staff console`;
      }
    } catch (_) {
      /* the default title stays */
    }
  }

  function wire() {
    $("#signin-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const key = $("#key").value.trim();
      const name = $("#staff-name").value.trim();
      const err = $("#signin-error");
      if (!name) {
        err.textContent = "Enter your name: shoppers see it next to your replies.";
        $("#staff-name").focus();
        return;
      }
      if (!/^[\x20-\x7e]{1,64}$/.test(name)) {
        // It travels in the X-Clerk-Staff header, which carries plain ASCII only.
        err.textContent = "Use up to 64 plain Latin letters, digits and spaces for the name.";
        $("#staff-name").focus();
        return;
      }
      err.textContent = "";
      const btn = ev.target.querySelector('[type="submit"]');
      btn.disabled = true;
      try {
        await signIn(key, name);
      } catch (e) {
        state.key = "";
        err.textContent = e.status === 401 || e.status === 403 ? e.message : `Could not sign in: ${e.message}`;
      } finally {
        btn.disabled = false;
      }
    });
    $("#sign-out").addEventListener("click", () => signOut(""));

    const tabs = TABS.map((t) => $(`#tab-${t}`));
    for (const tab of tabs) {
      tab.addEventListener("click", () => selectTab(tab.dataset.tab, false));
      tab.addEventListener("keydown", (ev) => {
        const i = tabs.indexOf(tab);
        let j = null;
        if (ev.key === "ArrowRight") j = (i + 1) % tabs.length;
        else if (ev.key === "ArrowLeft") j = (i - 1 + tabs.length) % tabs.length;
        else if (ev.key === "Home") j = 0;
        else if (ev.key === "End") j = tabs.length - 1;
        if (j !== null) {
          ev.preventDefault();
          selectTab(tabs[j].dataset.tab, true);
        }
      });
    }

    $("#reply-form").addEventListener("submit", sendReply);
    $("#reply").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
        ev.preventDefault();
        $("#reply-form").requestSubmit();
      }
    });
    $("#detail-close").addEventListener("click", closeHandoff);
    $("#detail-claim").addEventListener("click", () => state.selected !== null && claim(state.selected));

    $("#corrections-refresh").addEventListener("click", loadCorrections);
    $("#complaint-category").addEventListener("change", renderComplaints);
    $("#complaint-status").addEventListener("change", renderComplaints);
    $("#feedback-queue").addEventListener("change", loadFeedback);

    $("#upload-form").addEventListener("submit", upload);
    $("#search-form").addEventListener("submit", search);
    $("#analytics-days").addEventListener("change", loadAnalytics);
  }

  async function start() {
    wire();
    loadShopName();
    const saved = loadSession();
    if (saved && typeof saved.name === "string" && saved.name) {
      $("#staff-name").value = saved.name;
      try {
        await signIn(saved.key || "", saved.name);
        document.body.dataset.ready = "true";
        return;
      } catch (e) {
        $("#signin-error").textContent = e.message;
      }
    }
    $("#signin-view").hidden = false;
    $("#app-view").hidden = true;
    $("#key").focus();
    document.body.dataset.ready = "true";
  }

  start();
})();
