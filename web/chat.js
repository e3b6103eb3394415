// clerk: the shopper chat page (served at `/`, and inside the widget's iframe with `?embed=1`).
// Plain browser JavaScript, no build step. Every piece of text from the server or the shopper is
// inserted with textContent / createElement, never as HTML.
(() => {
  "use strict";

  const STORE_KEY = "clerk.conversation";
  const POLL_MS = 1500;

  const I18N = {
    en: {
      title: "Chat",
      tagline: "We usually answer right away.",
      human: "Talk to a person",
      humanRequest: "I'd like to talk to a person.",
      conversation: "Conversation",
      label: "Your message",
      placeholder: "Type your question…",
      send: "Send",
      you: "You",
      assistant: "Assistant",
      staff: "staff",
      sources: "Sources",
      yes: "Yes",
      no: "No",
      thumbUp: "This answer helped",
      thumbDown: "This answer didn't help",
      rated: "Thanks for the feedback!",
      suggest: "Suggest a better answer (optional)",
      suggestSend: "Send suggestion",
      suggestThanks: "Thanks! We'll review your suggestion.",
      joined: "A person from our team has joined the chat.",
      left: "The assistant is back with you.",
      error: "Sorry, something went wrong. Please try again.",
      inStock: "In stock",
      outOfStock: "Out of stock",
      stockLeft: "{n} left",
      order: "Order",
      total: "Total",
      tracking: "Tracking",
      welcome: "Hi! Ask me about our products, your orders, returns or our policies.",
      typing: "The assistant is typing",
    },
    zh: {
      title: "在线客服",
      tagline: "我们通常会立即回复。",
      human: "转人工客服",
      humanRequest: "我想转人工客服。",
      conversation: "对话",
      label: "您的消息",
      placeholder: "请输入您的问题…",
      send: "发送",
      you: "您",
      assistant: "助手",
      staff: "客服",
      sources: "来源",
      yes: "是",
      no: "否",
      thumbUp: "这个回答有帮助",
      thumbDown: "这个回答没有帮助",
      rated: "感谢您的反馈！",
      suggest: "建议更好的回答（可选）",
      suggestSend: "提交建议",
      suggestThanks: "谢谢！我们会审核您的建议。",
      joined: "客服人员已加入对话。",
      left: "智能助手已回到对话。",
      error: "抱歉，出了点问题，请重试。",
      inStock: "有货",
      outOfStock: "缺货",
      stockLeft: "剩余 {n} 件",
      order: "订单",
      total: "合计",
      tracking: "物流单号",
      welcome: "您好！有关商品、订单、退换货或店铺政策的问题都可以问我。",
      typing: "助手正在输入",
    },
    es: {
      title: "Chat",
      tagline: "Solemos responder al instante.",
      human: "Hablar con una persona",
      humanRequest: "Quiero hablar con una persona.",
      conversation: "Conversación",
      label: "Tu mensaje",
      placeholder: "Escribe tu pregunta…",
      send: "Enviar",
      you: "Tú",
      assistant: "Asistente",
      staff: "equipo",
      sources: "Fuentes",
      yes: "Sí",
      no: "No",
      thumbUp: "Esta respuesta me ayudó",
      thumbDown: "Esta respuesta no me ayudó",
      rated: "¡Gracias por tu opinión!",
      suggest: "Sugerir una respuesta mejor (opcional)",
      suggestSend: "Enviar sugerencia",
      suggestThanks: "¡Gracias! Revisaremos tu sugerencia.",
      joined: "Una persona de nuestro equipo se ha unido al chat.",
      left: "El asistente vuelve a atenderte.",
      error: "Lo siento, algo salió mal. Inténtalo de nuevo.",
      inStock: "Disponible",
      outOfStock: "Agotado",
      stockLeft: "Quedan {n}",
      order: "Pedido",
      total: "Total",
      tracking: "Seguimiento",
      welcome: "¡Hola! Pregúntame por nuestros productos, tus pedidos, devoluciones o nuestras políticas.",
      typing: "El asistente está escribiendo",
    },
  };

  // What the Yes / No buttons send, by the language of the message that asks.
  const CONFIRM_WORDS = { en: ["yes", "no"], zh: ["是", "不"], es: ["sí", "no"] };

  const $ = (sel) => document.querySelector(sel);
  const els = {
    log: $("#log"),
    scroller: $("#scroller"),
    form: $("#composer-form"),
    input: $("#composer"),
    send: $("#send"),
    human: $("#human"),
    shopName: $("#shop-name"),
  };

  const state = {
    key: null,
    shopName: "",
    conversation: null,
    lang: "en",
    lastId: 0,
    shown: new Map(), // message id -> element
    busy: 0, // requests that will report message ids themselves (send, handoff)
    polling: false,
    joined: false,
    confirms: [], // Yes/No button pairs still answerable
  };

  // ---------- small helpers ----------

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

  function t(key, vars) {
    const dict = I18N[state.lang] || I18N.en;
    let s = dict[key] !== undefined ? dict[key] : I18N.en[key] !== undefined ? I18N.en[key] : key;
    if (vars) for (const [k, v] of Object.entries(vars)) s = s.replace(`{${k}}`, String(v));
    return s;
  }

  function normLang(raw) {
    const l = String(raw || "").toLowerCase();
    if (l.startsWith("zh")) return "zh";
    if (l.startsWith("es")) return "es";
    if (l.startsWith("en")) return "en";
    return null;
  }

  /** Re-labels every element that carries a data-i18n* attribute, under root. */
  function applyI18n(root) {
    const scope = root || document;
    for (const n of scope.querySelectorAll("[data-i18n]")) n.textContent = t(n.dataset.i18n);
    for (const n of scope.querySelectorAll("[data-i18n-placeholder]")) n.placeholder = t(n.dataset.i18nPlaceholder);
    for (const n of scope.querySelectorAll("[data-i18n-aria]")) n.setAttribute("aria-label", t(n.dataset.i18nAria));
    for (const n of scope.querySelectorAll("[data-i18n-title]")) n.title = t(n.dataset.i18nTitle);
  }

  function setLang(raw) {
    const lang = normLang(raw);
    if (!lang || !I18N[lang]) return;
    const changed = lang !== state.lang;
    state.lang = lang;
    document.documentElement.lang = lang === "zh" ? "zh-CN" : lang;
    if (changed) applyI18n();
    document.title = state.shopName ? `${state.shopName} · ${t("title")}` : t("title");
  }

  function authHeaders(extra) {
    const h = Object.assign({}, extra || {});
    if (state.key) h.Authorization = `Bearer ${state.key}`;
    return h;
  }

  async function errorMessage(res) {
    try {
      const body = await res.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (_) {
      /* not JSON */
    }
    return `HTTP ${res.status}`;
  }

  async function api(method, path, body, extraHeaders) {
    const headers = authHeaders(extraHeaders);
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

  function nearBottom() {
    const s = els.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
  }

  function scrollDown(force) {
    if (force || nearBottom()) els.scroller.scrollTop = els.scroller.scrollHeight;
  }

  function setConversation(id) {
    if (!id || id === state.conversation) return;
    state.conversation = id;
    try {
      localStorage.setItem(STORE_KEY, id);
    } catch (_) {
      /* storage may be blocked in a third-party iframe; the page still works */
    }
  }

  function noteId(id) {
    if (typeof id === "number" && id > state.lastId) state.lastId = id;
  }

  // ---------- rendering ----------

  /** Splits the trailing "Sources: [1] …" paragraph (label localized) off an answer's text. */
  function stripSources(text, sources) {
    if (!text || !sources || sources.length === 0) return text || "";
    const idx = text.lastIndexOf("\n\n");
    if (idx < 0) return text;
    const tail = text.slice(idx + 2);
    if (/^[^\n[\]]{1,40}?[:：]\s*\[\d+\]/.test(tail)) return text.slice(0, idx).replace(/\s+$/, "");
    return text;
  }

  function disableConfirms() {
    for (const pair of state.confirms) for (const b of pair) b.disabled = true;
    state.confirms = [];
  }

  function notice(text, kind) {
    const n = el("div", { class: `notice${kind ? " " + kind : ""}`, role: kind === "error" ? "alert" : null, text });
    els.log.append(n);
    scrollDown(true);
    return n;
  }

  function whoLabel(role, author) {
    const who = el("div", { class: "who" });
    if (role === "user") who.append(el("span", { "data-i18n": "you", text: t("you") }));
    else if (role === "staff") {
      who.append(el("span", { text: author || "" }), " (", el("span", { "data-i18n": "staff", text: t("staff") }), ")");
    } else who.append(el("span", { "data-i18n": "assistant", text: t("assistant") }));
    return who;
  }

  /** Appends one message bubble; returns the handle the streaming code fills in. */
  function addMessage(role, opts) {
    const o = opts || {};
    disableConfirms();
    const bubble = el("div", { class: "bubble" });
    if (o.text) bubble.textContent = o.text;
    const node = el("div", { class: "msg", "data-testid": "msg", "data-role": role }, whoLabel(role, o.author), bubble);
    if (o.id !== undefined && o.id !== null) setId(node, o.id);
    els.log.append(node);
    scrollDown(role === "user");
    return { node, bubble, role, text: o.text || "" };
  }

  function setId(node, id) {
    node.dataset.id = String(id);
    state.shown.set(id, node);
  }

  function renderSources(sources) {
    const box = el("div", { class: "source-box" });
    const list = el("ul", { class: "sources", "data-testid": "sources" });
    list.setAttribute("aria-label", t("sources"));
    list.append(el("li", { class: "label", "aria-hidden": "true", "data-i18n": "sources", text: t("sources") }));
    // Opening a source shows the cited passage under the list (one at a time).
    const panel = el("div", { class: "passage", "data-testid": "passage", hidden: true, "aria-live": "polite" });
    let open = null;
    for (const s of sources) {
      const title = s.title || s.document_id || "";
      const tip = [title, s.document_id ? `(${s.document_id})` : "", s.locator || ""].filter(Boolean).join(" ");
      const chip = el(
        "a",
        { class: "source", "data-testid": "source", href: "#", title: tip, "aria-expanded": "false" },
        el("span", { class: "n", text: `[${s.n}]` }),
        el("span", { class: "t", text: title }),
        s.kind ? el("span", { class: "kind", text: s.kind }) : null,
      );
      chip.addEventListener("click", async (ev) => {
        ev.preventDefault();
        if (open === chip) {
          chip.setAttribute("aria-expanded", "false");
          panel.hidden = true;
          open = null;
          return;
        }
        if (open) open.setAttribute("aria-expanded", "false");
        open = chip;
        chip.setAttribute("aria-expanded", "true");
        panel.replaceChildren(el("div", { class: "sub", text: `[${s.n}] ${title}` }));
        panel.hidden = false;
        if (s.kind === "curated") {
          // Staff wrote this answer; there is no document behind it.
          panel.append(el("p", { text: s.locator || "" }));
          return;
        }
        try {
          const q = new URLSearchParams({ document_id: s.document_id || "", locator: s.locator || "" });
          const p = await api("GET", `/v1/knowledge/passage?${q}`);
          if (open !== chip) return;
          panel.append(
            el("p", { class: "passage-text", text: p.text || "" }),
            el("div", { class: "sub", text: [p.source && p.source.file, s.locator].filter(Boolean).join(" · ") }),
          );
        } catch (e) {
          if (open === chip) panel.append(el("p", { class: "sub", text: e.message || String(e) }));
        }
      });
      list.append(el("li", null, chip));
    }
    box.append(list, panel);
    return box;
  }

  function money(v) {
    if (v === null || v === undefined || v === "") return "";
    if (typeof v === "number") return `$${v.toFixed(2)}`;
    return String(v);
  }

  function statusClass(status) {
    const s = String(status || "").toLowerCase();
    if (s === "delivered") return "ok";
    if (s === "cancelled") return "bad";
    if (s.includes("requested") || s.includes("modified")) return "warn";
    return "info";
  }

  function productCard(c) {
    const stock = c.in_stock
      ? el("span", { class: "badge ok", "data-i18n": "inStock", text: t("inStock") })
      : el("span", { class: "badge bad", "data-i18n": "outOfStock", text: t("outOfStock") });
    const count =
      typeof c.stock === "number" && c.in_stock ? el("span", { class: "sub", text: t("stockLeft", { n: c.stock }) }) : null;
    return el(
      "div",
      { class: "card", "data-testid": "card-product" },
      el(
        "div",
        { class: "title" },
        // Only the shop's own web addresses become links, never javascript: or data: ones.
        /^(https?:\/\/|\/)/i.test(c.url || "") ? el("a", { href: c.url, target: "_blank", rel: "noopener", text: c.name || "" }) : el("span", { text: c.name || "" }),
        el("span", { class: "price", text: money(c.price) }),
      ),
      c.variant ? el("div", { class: "sub", text: c.variant }) : null,
      el("div", { class: "row" }, stock, count),
    );
  }

  function orderCard(c) {
    const card = el(
      "div",
      { class: "card", "data-testid": "card-order" },
      el(
        "div",
        { class: "title" },
        el("span", { text: c.order_id || "" }),
        el("span", { class: `badge ${statusClass(c.status)}`, "data-testid": "order-status", text: c.status || "" }),
      ),
    );
    if (Array.isArray(c.items) && c.items.length) {
      const ul = el("ul");
      for (const it of c.items) ul.append(el("li", { text: typeof it === "string" ? it : it.name || JSON.stringify(it) }));
      card.append(ul);
    }
    if (c.total !== undefined && c.total !== null) {
      card.append(
        el("div", { class: "row" }, el("span", { class: "sub", "data-i18n": "total", text: t("total") }), el("span", { class: "price", text: money(c.total) })),
      );
    }
    if (Array.isArray(c.tracking) && c.tracking.length) {
      const tr = el("div", { class: "tracking" }, el("span", { class: "sub", "data-i18n": "tracking", text: t("tracking") }), ": ");
      c.tracking.forEach((x, i) => {
        if (i) tr.append(", ");
        tr.append(x.carrier ? `${x.carrier} ${x.id}` : String(x.id));
      });
      card.append(tr);
      // Scan events, newest first, as the carrier reported them.
      const events = c.tracking.flatMap((x) => (Array.isArray(x.events) ? x.events : []));
      if (events.length) {
        const ol = el("ol", { class: "events", "data-testid": "tracking-events" });
        for (const e of events.slice().sort((a, b) => (b.at || 0) - (a.at || 0))) {
          const when = typeof e.at === "number" ? new Date(e.at * 1000).toLocaleString(state.lang) : "";
          ol.append(
            el(
              "li",
              null,
              el("time", { class: "sub", datetime: typeof e.at === "number" ? new Date(e.at * 1000).toISOString() : null, text: when }),
              " ",
              el("span", { text: e.status || "" }),
              e.location ? el("span", { class: "sub", text: ` · ${e.location}` }) : null,
            ),
          );
        }
        card.append(ol);
      }
    }
    return card;
  }

  function renderCards(cards) {
    const box = el("div", { class: "cards" });
    for (const c of cards) {
      if (!c || typeof c !== "object") continue;
      if (c.type === "product") box.append(productCard(c));
      else if (c.type === "order") box.append(orderCard(c));
    }
    return box.childElementCount ? box : null;
  }

  function renderConfirm(language) {
    const words = CONFIRM_WORDS[normLang(language) || state.lang] || CONFIRM_WORDS.en;
    const yes = el("button", { type: "button", class: "primary small", "data-testid": "confirm-yes", "data-i18n": "yes", text: t("yes") });
    const no = el("button", { type: "button", class: "small", "data-testid": "confirm-no", "data-i18n": "no", text: t("no") });
    const pair = [yes, no];
    const answer = (word) => {
      for (const b of pair) b.disabled = true;
      send(word);
    };
    yes.addEventListener("click", () => answer(words[0]));
    no.addEventListener("click", () => answer(words[1]));
    state.confirms.push(pair);
    return el("div", { class: "actions confirm" }, yes, no);
  }

  /** A thumb icon drawn inline (no icon font, no emoji font needed). */
  function thumbIcon(down) {
    const ns = "http://www.w3.org/2000/svg";
    const icon = document.createElementNS(ns, "svg");
    icon.setAttribute("viewBox", "0 0 24 24");
    icon.setAttribute("width", "18");
    icon.setAttribute("height", "18");
    icon.setAttribute("aria-hidden", "true");
    icon.setAttribute("focusable", "false");
    const g = document.createElementNS(ns, "g");
    if (down) g.setAttribute("transform", "rotate(180 12 12)");
    const cuff = document.createElementNS(ns, "rect");
    for (const [k, v] of Object.entries({ x: 2, y: 10, width: 4, height: 11, rx: 1 })) cuff.setAttribute(k, v);
    const hand = document.createElementNS(ns, "path");
    hand.setAttribute("d", "M8 10.5 11.6 3.2c1.7-.3 3 .9 2.6 2.7L13.4 10H20c1.2 0 2.1 1.1 1.8 2.3l-2 7.2c-.3.9-1.1 1.5-2 1.5H8z");
    g.append(cuff, hand);
    icon.append(g);
    return icon;
  }

  function renderThumbs(node, messageId) {
    const up = el("button", { type: "button", class: "small", "data-testid": "thumb-up", "aria-pressed": "false", "data-i18n-aria": "thumbUp", "data-i18n-title": "thumbUp", "aria-label": t("thumbUp"), title: t("thumbUp") }, thumbIcon(false));
    const down = el("button", { type: "button", class: "small", "data-testid": "thumb-down", "aria-pressed": "false", "data-i18n-aria": "thumbDown", "data-i18n-title": "thumbDown", "aria-label": t("thumbDown"), title: t("thumbDown") }, thumbIcon(true));
    const status = el("span", { class: "muted small-status", role: "status" });
    const bar = el("div", { class: "actions thumbs" }, up, down, status);

    const rate = async (rating, button) => {
      up.disabled = down.disabled = true;
      try {
        await api("POST", `/v1/assistant/messages/${encodeURIComponent(messageId)}/rating`, { rating }, { "X-Clerk-Conversation": state.conversation || "" });
        up.setAttribute("aria-pressed", String(button === up));
        down.setAttribute("aria-pressed", String(button === down));
        status.textContent = t("rated");
        status.dataset.i18n = "rated";
        if (rating === "down") showCorrection(node, messageId);
      } catch (e) {
        status.textContent = e.message;
        delete status.dataset.i18n;
      } finally {
        up.disabled = down.disabled = false;
      }
    };
    up.addEventListener("click", () => rate("up", up));
    down.addEventListener("click", () => rate("down", down));
    return bar;
  }

  function showCorrection(node, messageId) {
    if (node.querySelector(".correction-box")) return;
    const id = `correction-${messageId}`;
    const area = el("textarea", { id, "data-testid": "correction", rows: "3", maxlength: "4000" });
    const button = el("button", { type: "submit", class: "small", "data-testid": "correction-send", "data-i18n": "suggestSend", text: t("suggestSend") });
    const status = el("div", { class: "status", role: "status", "data-testid": "correction-status" });
    const form = el(
      "form",
      { class: "correction-box" },
      el("label", { for: id, "data-i18n": "suggest", text: t("suggest") }),
      area,
      el("div", { class: "actions" }, button),
      status,
    );
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const correction = area.value.trim();
      if (!correction) return;
      button.disabled = area.disabled = true;
      try {
        await api("POST", `/v1/assistant/messages/${encodeURIComponent(messageId)}/rating`, { rating: "down", correction }, { "X-Clerk-Conversation": state.conversation || "" });
        status.className = "status ok";
        status.dataset.i18n = "suggestThanks";
        status.textContent = t("suggestThanks");
      } catch (e) {
        status.className = "status error";
        status.textContent = e.message;
        button.disabled = area.disabled = false;
      }
    });
    node.append(form);
    area.focus();
  }

  /** Fills in an assistant message once its text, sources, cards and id are known. */
  function finishAssistant(handle, info) {
    const { node, bubble } = handle;
    node.classList.remove("streaming");
    node.removeAttribute("aria-busy");
    const sources = Array.isArray(info.sources) ? info.sources : [];
    const cards = Array.isArray(info.cards) ? info.cards : [];
    const text = stripSources(info.text, sources);
    if (bubble.textContent !== text) bubble.textContent = text;
    if (!text) bubble.hidden = true;
    if (sources.length) node.append(renderSources(sources));
    const cardBox = cards.length ? renderCards(cards) : null;
    if (cardBox) node.append(cardBox);
    if (typeof info.id === "number") setId(node, info.id);
    if (info.awaiting) node.append(renderConfirm(info.language));
    if (typeof info.id === "number") node.append(renderThumbs(node, info.id));
    if (info.language) setLang(info.language);
    scrollDown();
  }

  /** Renders one stored message (restore and polling). */
  function renderStored(m) {
    // The poll's cursor moves only over what the server listed, never over a streamed reply's
    // id: a staff message written while that reply ran has a lower id and must still arrive.
    noteId(m.id);
    if (state.shown.has(m.id)) return;
    const role = m.role === "shopper" ? "user" : m.role;
    // A message this page showed itself, whose id it never learned, is already on screen.
    if (role === "user" || role === "assistant") {
      const meta = m.meta || {};
      const want = role === "user" ? m.content : stripSources(m.content, meta.sources);
      const pending = [...els.log.querySelectorAll(`[data-testid="msg"][data-role="${role}"]:not([data-id])`)].find(
        (n) => !n.classList.contains("streaming") && n.querySelector(".bubble").textContent === want,
      );
      if (pending) {
        setId(pending, m.id);
        if (role === "assistant" && !pending.querySelector(".thumbs")) pending.append(renderThumbs(pending, m.id));
        return;
      }
    }
    if (role === "user") {
      addMessage("user", { id: m.id, text: m.content });
      return;
    }
    if (role === "staff") {
      addMessage("staff", { id: m.id, text: m.content, author: m.author || "" });
      return;
    }
    if (role === "assistant") {
      const meta = m.meta || {};
      if (!m.content && !(meta.cards && meta.cards.length)) {
        // A silent reply (staff hold the conversation): nothing to show.
        state.shown.set(m.id, null);
        noteId(m.id);
        return;
      }
      const h = addMessage("assistant", {});
      finishAssistant(h, {
        text: m.content,
        sources: meta.sources,
        cards: meta.cards,
        awaiting: !!meta.awaiting_confirmation,
        language: meta.language,
        id: m.id,
      });
      return;
    }
    // Anything else (system notes) shows as a notice.
    state.shown.set(m.id, notice(m.content));
    noteId(m.id);
  }

  function applyPresence(data) {
    const claimed = !!data.human && data.handoff && data.handoff.status === "claimed";
    if (claimed && !state.joined) {
      state.joined = true;
      notice(t("joined")).dataset.testid = "joined";
    } else if (!data.human && state.joined) {
      state.joined = false;
      notice(t("left"));
    }
  }

  // ---------- talking to the server ----------

  function setBusy(delta) {
    state.busy += delta;
    const busy = state.busy > 0;
    els.send.disabled = busy;
    els.human.disabled = busy;
  }

  async function send(text) {
    const content = String(text || "").trim();
    if (!content || state.busy > 0) return;
    addMessage("user", { text: content });
    const handle = addMessage("assistant", {});
    handle.node.classList.add("streaming");
    handle.node.setAttribute("aria-busy", "true");
    handle.bubble.setAttribute("aria-label", t("typing"));
    setBusy(+1);
    let text_ = ""; // everything received
    let final = null;
    // The server may send a whole reply's pieces in one burst; show them a frame apart so the
    // text visibly streams (one DOM update per piece or few pieces, never split within a piece).
    const queue = [];
    let painted = "";
    let pumping = null;
    const pump = () => {
      if (pumping) return;
      pumping = new Promise((resolve) => {
        const tick = () => {
          if (!queue.length) {
            pumping = null;
            resolve();
            return;
          }
          const n = document.hidden ? queue.length : Math.max(1, Math.ceil(queue.length / 10));
          painted += queue.splice(0, n).join("");
          handle.bubble.removeAttribute("aria-label");
          handle.bubble.textContent = painted;
          scrollDown();
          setTimeout(tick, 35);
        };
        tick();
      });
    };
    try {
      const send = () => {
        const headers = authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" });
        if (state.conversation) headers["X-Clerk-Conversation"] = state.conversation;
        return fetch("/v1/chat/completions", {
          method: "POST",
          headers,
          body: JSON.stringify({ model: "clerk", stream: true, messages: [{ role: "user", content }] }),
        });
      };
      let res = await send();
      if (res.status === 400 && state.conversation) {
        const body = await res.clone().json().catch(() => null);
        if (body && body.error && body.error.param === "X-Clerk-Conversation") {
          // The server no longer knows this conversation (retention purged it, or its data was
          // reset): start a new one rather than fail every message until a reload.
          state.conversation = null;
          try {
            localStorage.removeItem(STORE_KEY);
          } catch (_) {
            /* ignore */
          }
          res = await send();
        }
      }
      if (!res.ok) throw new Error(await errorMessage(res));
      setConversation(res.headers.get("x-clerk-conversation"));

      const onEvent = (data) => {
        if (data === "[DONE]") return true;
        let chunk;
        try {
          chunk = JSON.parse(data);
        } catch (_) {
          return false;
        }
        if (chunk.error) throw new Error(chunk.error.message || "stream error");
        if (chunk.conversation_id) setConversation(chunk.conversation_id);
        const choice = chunk.choices && chunk.choices[0];
        const piece = choice && choice.delta && choice.delta.content;
        if (piece) {
          text_ += piece;
          queue.push(piece);
          pump();
        }
        if (chunk.clerk || chunk.sources) final = chunk;
        return false;
      };

      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buf = "";
      let dataLines = [];
      let done = false;
      while (!done) {
        const r = await reader.read();
        if (r.done) {
          buf += decoder.decode();
          buf += "\n\n";
        } else {
          buf += decoder.decode(r.value, { stream: true });
        }
        let nl;
        while (!done && (nl = buf.indexOf("\n")) >= 0) {
          let line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line.endsWith("\r")) line = line.slice(0, -1);
          if (line === "") {
            if (dataLines.length) {
              done = onEvent(dataLines.join("\n"));
              dataLines = [];
            }
          } else if (line.startsWith("data:")) {
            dataLines.push(line.slice(5).replace(/^ /, ""));
          }
        }
        if (r.done) break;
      }
      if (done) reader.cancel().catch(() => {});
      if (pumping) await pumping;

      const clerk = (final && final.clerk) || {};
      if (clerk.silent || (!text_ && !(clerk.cards && clerk.cards.length))) {
        handle.node.remove();
        if (typeof clerk.message_id === "number") state.shown.set(clerk.message_id, null);
      } else {
        finishAssistant(handle, {
          text: text_,
          sources: final && final.sources,
          cards: clerk.cards,
          awaiting: !!clerk.awaiting_confirmation,
          language: clerk.language,
          id: typeof clerk.message_id === "number" ? clerk.message_id : null,
        });
      }
    } catch (e) {
      queue.length = 0;
      if (text_) finishAssistant(handle, { text: text_ });
      else handle.node.remove();
      notice(`${t("error")} (${e.message})`, "error");
    } finally {
      setBusy(-1);
    }
  }

  async function talkToPerson() {
    if (state.busy > 0) return;
    if (!state.conversation) {
      // No conversation yet: asking in words starts one, and the assistant hands it over.
      await send(t("humanRequest"));
      return;
    }
    setBusy(+1);
    try {
      const r = await api("POST", `/v1/assistant/conversations/${encodeURIComponent(state.conversation)}/handoff`, {});
      if (r.conversation_id) setConversation(r.conversation_id);
      if (typeof r.message_id === "number" && state.shown.has(r.message_id)) return;
      const h = addMessage("assistant", {});
      finishAssistant(h, { text: r.text || "", language: r.language, id: typeof r.message_id === "number" ? r.message_id : null });
    } catch (e) {
      notice(`${t("error")} (${e.message})`, "error");
    } finally {
      setBusy(-1);
    }
  }

  async function restore() {
    if (!state.conversation) return;
    let data;
    try {
      data = await api("GET", `/v1/assistant/conversations/${encodeURIComponent(state.conversation)}?after=0`);
    } catch (e) {
      if (e.status === 404 || e.status === 403) {
        // The server no longer knows it (or it isn't ours): start afresh.
        state.conversation = null;
        try {
          localStorage.removeItem(STORE_KEY);
        } catch (_) {
          /* ignore */
        }
      }
      return;
    }
    for (const m of data.messages || []) renderStored(m);
    applyPresence(data);
    scrollDown(true);
  }

  async function poll() {
    if (!state.conversation || state.busy > 0 || state.polling) return;
    state.polling = true;
    const convo = state.conversation;
    try {
      const data = await api("GET", `/v1/assistant/conversations/${encodeURIComponent(convo)}?after=${state.lastId}`);
      // A send or handoff that started meanwhile reports its own messages; apply nothing stale.
      if (state.busy > 0 || convo !== state.conversation) return;
      for (const m of data.messages || []) renderStored(m);
      applyPresence(data);
    } catch (_) {
      /* offline or restarting: try again on the next tick */
    } finally {
      state.polling = false;
    }
  }

  // ---------- start ----------

  function fragmentKey() {
    const hash = location.hash.replace(/^#/, "");
    if (!hash) return null;
    const k = new URLSearchParams(hash).get("key");
    return k && k.trim() ? k.trim() : null;
  }

  async function loadConfig() {
    try {
      const res = await fetch("/web/config.json", { cache: "no-store" });
      if (res.ok) return await res.json();
    } catch (_) {
      /* fall back to defaults */
    }
    return {};
  }

  function autoGrow() {
    els.input.style.height = "auto";
    els.input.style.height = `${Math.min(els.input.scrollHeight + 2, 144)}px`;
  }

  async function start() {
    const params = new URLSearchParams(location.search);
    if (params.get("embed") === "1") document.body.classList.add("embed");

    state.lang = "en";
    setLang(normLang(navigator.language) || "en");
    applyI18n();

    const config = await loadConfig();
    state.shopName = typeof config.shop_name === "string" ? config.shop_name : "";
    if (state.shopName) els.shopName.textContent = state.shopName;
    state.key = fragmentKey() || (typeof config.widget_key === "string" && config.widget_key ? config.widget_key : null);
    setLang(state.lang);

    els.form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = els.input.value;
      if (!text.trim() || state.busy > 0) return;
      els.input.value = "";
      autoGrow();
      send(text);
    });
    els.input.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
        ev.preventDefault();
        els.form.requestSubmit();
      }
    });
    els.input.addEventListener("input", autoGrow);
    els.human.addEventListener("click", talkToPerson);

    try {
      state.conversation = localStorage.getItem(STORE_KEY) || null;
    } catch (_) {
      state.conversation = null;
    }
    notice(t("welcome")).dataset.i18n = "welcome";
    setBusy(+1);
    try {
      await restore();
    } finally {
      setBusy(-1);
    }
    setInterval(poll, POLL_MS);
    document.body.dataset.ready = "true";
  }

  start();
})();
