// clerk: the chat widget for a merchant's own site, one tag:
//   <script src="https://CLERK/widget.js" data-key="WIDGET_KEY" async></script>
// It adds a round chat button at the bottom right; the button opens a panel holding clerk's chat
// page in an iframe (`/?embed=1#key=KEY`). Its styles live in a shadow root, so the host page's
// CSS and the widget's don't meet. The only global it leaves is `window.ClerkWidget`.
(function () {
  "use strict";
  if (window.ClerkWidget) return; // loaded twice: keep the first

  // `currentScript` is only set while this file first runs, so read it now.
  var script = document.currentScript;
  if (!script) {
    var all = document.querySelectorAll("script[src]");
    for (var i = all.length - 1; i >= 0; i--) {
      if (/\/widget\.js(\?|#|$)/.test(all[i].src)) {
        script = all[i];
        break;
      }
    }
  }
  var src = script && script.src ? script.src : location.href;
  var origin;
  try {
    origin = new URL(src, location.href).origin;
  } catch (e) {
    origin = location.origin;
  }
  var key = script ? script.getAttribute("data-key") || "" : "";
  var label = (script && script.getAttribute("data-label")) || "Chat with us";

  var host, shadow, button, panel, frame, closeButton;
  var isOpen = false;

  var CSS = [
    ":host { all: initial; }",
    ".bubble { position: fixed; right: 20px; bottom: 20px; z-index: 2147483646; width: 60px; height: 60px;",
    "  border-radius: 50%; border: none; cursor: pointer; background: #1f6feb; color: #fff;",
    "  box-shadow: 0 4px 14px rgba(0,0,0,.25); display: flex; align-items: center; justify-content: center; padding: 0; }",
    ".bubble:hover { filter: brightness(1.08); }",
    ".bubble:focus-visible, .close:focus-visible { outline: 3px solid #ff8c00; outline-offset: 3px; }",
    ".bubble svg { width: 28px; height: 28px; fill: currentColor; }",
    ".panel { position: fixed; right: 20px; bottom: 92px; z-index: 2147483647; width: 380px; height: 600px;",
    "  max-height: calc(100vh - 112px); background: #fff; border-radius: 14px; overflow: hidden;",
    "  box-shadow: 0 8px 32px rgba(0,0,0,.28); display: flex; flex-direction: column; }",
    ".panel[hidden] { display: none; }",
    ".bar { display: flex; align-items: center; justify-content: space-between; padding: 6px 8px 6px 14px;",
    "  background: #1f6feb; color: #fff; font: 600 15px/1.2 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; }",
    ".close { border: none; background: transparent; color: #fff; font-size: 24px; line-height: 1; width: 40px; height: 40px;",
    "  border-radius: 8px; cursor: pointer; }",
    ".close:hover { background: rgba(255,255,255,.15); }",
    "iframe { flex: 1; width: 100%; border: 0; display: block; background: #fff; }",
    "@media (max-width: 600px) {",
    "  .panel { right: 0; bottom: 0; left: 0; top: 0; width: 100%; height: 100%; max-height: none; border-radius: 0; }",
    "  .panel:not([hidden]) ~ .bubble { display: none; }",
    "}",
  ].join("\n");

  function icon() {
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    var path = document.createElementNS(ns, "path");
    path.setAttribute("d", "M12 3C6.5 3 2 6.6 2 11c0 2.4 1.3 4.6 3.4 6.1L4.6 21l4.2-2.3c1 .3 2.1.4 3.2.4 5.5 0 10-3.6 10-8S17.5 3 12 3z");
    svg.appendChild(path);
    return svg;
  }

  function frameUrl() {
    return origin + "/?embed=1" + (key ? "#key=" + encodeURIComponent(key) : "");
  }

  function build() {
    if (host) return;
    host = document.createElement("div");
    host.setAttribute("data-clerk-widget", "");
    shadow = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
    var style = document.createElement("style");
    style.textContent = CSS;

    panel = document.createElement("div");
    panel.className = "panel";
    panel.id = "clerk-panel";
    panel.hidden = true;
    panel.setAttribute("role", "dialog");
    panel.setAttribute("aria-label", label);

    var bar = document.createElement("div");
    bar.className = "bar";
    var title = document.createElement("span");
    title.textContent = label;
    closeButton = document.createElement("button");
    closeButton.type = "button";
    closeButton.className = "close";
    closeButton.setAttribute("aria-label", "Close chat");
    closeButton.textContent = "\u00d7";
    closeButton.addEventListener("click", close);
    bar.appendChild(title);
    bar.appendChild(closeButton);
    panel.appendChild(bar);
    panel.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape") close();
    });

    button = document.createElement("button");
    button.type = "button";
    button.className = "bubble";
    button.setAttribute("aria-label", label);
    button.setAttribute("aria-expanded", "false");
    button.setAttribute("aria-controls", "clerk-panel");
    button.appendChild(icon());
    button.addEventListener("click", toggle);

    shadow.appendChild(style);
    shadow.appendChild(panel);
    shadow.appendChild(button);
    document.body.appendChild(host);
  }

  function open() {
    build();
    if (!frame) {
      frame = document.createElement("iframe");
      frame.title = label;
      frame.src = frameUrl();
      frame.setAttribute("allow", "clipboard-write");
      panel.appendChild(frame);
    }
    panel.hidden = false;
    isOpen = true;
    button.setAttribute("aria-expanded", "true");
    try {
      frame.focus();
    } catch (e) {
      /* ignore */
    }
  }

  function close() {
    if (!host) return;
    panel.hidden = true;
    isOpen = false;
    button.setAttribute("aria-expanded", "false");
    button.focus();
  }

  function toggle() {
    if (isOpen) close();
    else open();
  }

  window.ClerkWidget = {
    open: open,
    close: close,
    toggle: toggle,
  };

  if (document.body) build();
  else document.addEventListener("DOMContentLoaded", build);
})();
