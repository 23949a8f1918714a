// pictl wall panel: builds itself from system.describe, follows events, survives a flaky link.
// No build step, no outside fetch: this file, panel.css and index.html are all there is.
"use strict";
(() => {
  const TOKEN_KEY = "pictl.token";
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  // A press with no answer by then is abandoned (the tile says to check the device). Until then it is
  // resent after a reconnect with its request_key, which joins the first call if that reached the
  // daemon; later than this, a press that never arrived could move a door long after the finger left.
  const ACTION_GIVE_UP_MS = 45000;
  const CALL_TIMEOUT_MS = 15000; // non-action calls (auth, describe, subscribe, status)

  const $ = (id) => document.getElementById(id);
  const ui = {
    tiles: $("tiles"), link: $("link"), login: $("login"), form: $("login-form"),
    token: $("token"), loginError: $("login-error"), logout: $("logout"),
  };

  const st = {
    ws: null, live: false, stopped: false, nextId: 1, backoff: BACKOFF_MIN_MS, retryAt: 0, timer: null,
    pending: new Map(), // request id -> {resolve, reject, timer}
    inflight: new Map(), // request_key -> {device, action, params, started}: resent after a reconnect
    devices: new Map(), // name -> {name, kind, actions, state, online, since, reason, lastUpdate, el}
    seq: null, epoch: null, resyncs: 0, connects: 0, firstTile: false, signature: null,
    nodes: new Map(), // fleet panel (pictl aggregate): node -> its heading element
  };

  // -- small helpers ------------------------------------------------------------------------------
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  };
  const title = (s) => String(s).replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase());
  const clock = (iso) => {
    const d = iso ? new Date(iso) : null;
    return d && !isNaN(d) ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23" }) : "?";
  };
  const age = (iso) => {
    const t = iso ? Date.parse(iso) : NaN;
    if (isNaN(t)) return "";
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    return `${(s / 3600).toFixed(1)} h ago`;
  };
  const randomKey = () => {
    // crypto.randomUUID needs a secure context; a LAN panel is often plain http.
    const bytes = new Uint8Array(16);
    crypto.getRandomValues(bytes);
    return "panel-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  };
  const wsUrl = () => `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
  const VERBS = { open: "open", close: "close", on: "turn on", off: "turn off", toggle: "toggle", set: "set",
    set_position: "move" };
  const PROGRESS = { open: "Opening…", close: "Closing…", on: "Switching on…", off: "Switching off…",
    toggle: "Switching…", unlock: "Unlocking…", lock: "Locking…", stop: "Stopping…", set_position: "Moving…" };
  const DONE = { open: "Opened", close: "Closed", on: "Switched on", off: "Switched off", toggle: "Switched",
    unlock: "Unlocked", lock: "Locked", stop: "Stopped", set_position: "Moved" };
  // An action whose describe says "interrupts" (a stop) never waits for the one in progress: its
  // button stays pressable while the device is busy, and the call it interrupts is not reported here.
  const interrupts = (d, action) => !!(d.actions[action] && d.actions[action].interrupts);
  // Each device says what the panel draws (system.describe's "panel": proof, buttons, controls, facts);
  // nothing here names a kind. While a command waits for its proof: "Opening, waiting for the contact".
  // A device only ever shows what was observed; "moving" (commanded, not yet seen) is said here.
  const face = (d) => d.describe.panel || {};
  const proof = (d) => face(d).proof || "confirmation";
  const waiting = (d, action) =>
    `${(PROGRESS[action] || "Working…").replace("…", "")}, waiting for ${proof(d) === "confirmation" ? "" : "the "}${proof(d)}`;
  const buttonsOf = (d) => face(d).buttons ||
    Object.keys(d.actions).filter((a) => !Object.values(d.actions[a].params || {}).some((p) => p.required));

  // -- the link -----------------------------------------------------------------------------------
  function setLink(state, text) {
    ui.link.dataset.state = state;
    ui.link.textContent = text;
    document.body.className = `link-${state}`;
  }

  function connect() {
    clearTimeout(st.timer);
    if (st.stopped) return;
    setLink(st.connects ? "down" : "connecting", st.connects ? "Link down — reconnecting…" : "Connecting…");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (err) {
      scheduleReconnect();
      return;
    }
    st.ws = ws;
    ws.onopen = () => onOpen(ws);
    ws.onmessage = (msg) => onFrame(msg.data);
    ws.onclose = () => onClose(ws);
  }

  function scheduleReconnect() {
    if (st.stopped) return;
    const delay = Math.min(st.backoff, BACKOFF_MAX_MS) * (0.75 + Math.random() * 0.5);
    st.backoff = Math.min(st.backoff * 2, BACKOFF_MAX_MS);
    st.retryAt = Date.now() + delay;
    st.timer = setTimeout(connect, delay);
    tickLink();
  }

  function tickLink() {
    if (st.live || st.stopped || !st.retryAt) return;
    const left = Math.max(0, Math.ceil((st.retryAt - Date.now()) / 1000));
    setLink("down", left > 0 ? `Link down — retrying in ${left} s` : "Link down — reconnecting…");
  }

  function onClose(ws) {
    if (st.ws !== ws) return;
    st.ws = null;
    st.live = false;
    for (const [, p] of st.pending) {
      clearTimeout(p.timer);
      p.reject(Object.assign(new Error("link lost"), { linkLost: true }));
    }
    st.pending.clear();
    if (st.stopped) return;
    scheduleReconnect();
  }

  function rpc(method, params, timeoutMs = CALL_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const ws = st.ws;
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        reject(Object.assign(new Error("link down"), { linkLost: true }));
        return;
      }
      const id = st.nextId++;
      const timer = timeoutMs ? setTimeout(() => {
        st.pending.delete(id);
        reject(Object.assign(new Error(`no answer to ${method}`), { linkLost: true }));
        ws.close(); // a link that does not answer is as good as down: start over
      }, timeoutMs) : null;
      st.pending.set(id, { resolve, reject, timer });
      const msg = { jsonrpc: "2.0", id, method };
      if (params) msg.params = params;
      ws.send(JSON.stringify(msg));
    });
  }

  function onFrame(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch (err) {
      return;
    }
    for (const item of Array.isArray(msg) ? msg : [msg]) {
      if (item && item.method === "event" && item.params) {
        onEvent(item.params);
      } else if (item && st.pending.has(item.id)) {
        const p = st.pending.get(item.id);
        st.pending.delete(item.id);
        clearTimeout(p.timer);
        if (item.error) p.reject(Object.assign(new Error(item.error.message), item.error));
        else p.resolve(item.result);
      }
    }
  }

  async function onOpen(ws) {
    const token = localStorage.getItem(TOKEN_KEY);
    if (!token) {
      st.stopped = true;
      ws.close();
      return showLogin("");
    }
    try {
      await rpc("session.auth", { token });
    } catch (err) {
      if (err.code === -32001) {
        localStorage.removeItem(TOKEN_KEY);
        st.stopped = true;
        ws.close();
        showLogin(err.data && err.data.retry_after_s ? "Too many wrong tokens: wait a minute, then try again."
          : "That token was refused.");
      }
      return; // link trouble: onClose reconnects
    }
    try {
      const described = await rpc("system.describe");
      build(described.devices || {}, described.methods, described.nodes);
      const params = { topics: ["*"] };
      const resuming = st.seq !== null && st.epoch !== null;
      if (resuming) Object.assign(params, { since_seq: st.seq, epoch: st.epoch });
      const reply = await rpc("events.subscribe", params);
      if (!resuming || reply.resync || reply.epoch !== st.epoch) await resync();
      else document.documentElement.dataset.replayed = (Number(document.documentElement.dataset.replayed) || 0) +
        (reply.replayed || 0);
      st.epoch = reply.epoch || st.epoch;
    } catch (err) {
      if (err.code === -32001) { // the token works but its role lacks what a panel needs
        localStorage.removeItem(TOKEN_KEY);
        st.stopped = true;
        showLogin(`This token's role may not call ${(err.data && err.data.method) || "what the panel needs"}.`);
      }
      if (st.ws === ws) ws.close();
      return;
    }
    st.live = true;
    st.connects += 1;
    st.backoff = BACKOFF_MIN_MS;
    st.retryAt = 0;
    document.documentElement.dataset.connects = st.connects;
    setLink("up", "Live");
    ui.logout.hidden = false;
    for (const [key, entry] of st.inflight) send(key, entry); // same request_key: never actuates twice
  }

  async function resync() {
    const status = await rpc("system.status");
    for (const [name, dev] of Object.entries(status.devices || {})) {
      const d = st.devices.get(name);
      if (!d) continue;
      d.state = dev.state;
      d.online = dev.online;
      d.since = dev.since || null;
      d.reason = dev.reason || null;
      d.lastUpdate = dev.last_update;
      render(d);
    }
    st.seq = status.seq;
    st.epoch = status.epoch;
    st.resyncs += 1;
    document.documentElement.dataset.resyncs = st.resyncs;
  }

  function onEvent(ev) {
    if (typeof ev.seq === "number") {
      if (st.seq !== null && ev.seq <= st.seq) return; // already applied (replay overlap)
      st.seq = ev.seq;
      document.documentElement.dataset.seq = st.seq;
    }
    const topic = String(ev.topic || "");
    const data = ev.data || {};
    if (onFleetEvent(topic, data)) return;
    if (topic === "system.status") {
      const d = st.devices.get(data.device);
      if (!d) return;
      d.online = !!data.online;
      d.since = data.since || null;
      d.reason = data.reason || null;
      render(d);
      return;
    }
    const dot = topic.lastIndexOf(".");
    const d = st.devices.get(topic.slice(0, dot));
    if (!d) return;
    const what = topic.slice(dot + 1);
    if (what === "state" || what === "reading") {
      const { cause, ...state } = data;
      d.state = state;
      d.lastUpdate = ev.time;
      if (cause === "external" && !d.busy) d.note = null;
      render(d);
    } else if (what === "discrepancy") {
      d.note = { kind: "warn", text: `Unexpected: ${d.name} is ${data.observed}, output ${data.output}` };
      render(d);
    }
  }

  // -- tiles --------------------------------------------------------------------------------------
  // -- the fleet (pictl aggregate): devices are "<node>.<device>", grouped under their node -------
  function onFleetEvent(topic, data) {
    if (topic === "fleet.node") {
      showNode(data.node, !!data.online, data.since);
      return true;
    }
    if (topic === "system.describe") { // a node joined or its devices changed: rebuild, then re-read
      rpc("system.describe").then((d) => {
        build(d.devices || {}, d.methods, d.nodes);
        return resync();
      }).catch(() => {});
      return true;
    }
    return false;
  }

  // A node's tiles sit in a group of their own (heading, then a small grid), so a dozen nodes fit a
  // wall screen side by side (panel.css: the fleet layout).
  function nodeGroup(node) {
    const group = el("section", "node");
    const head = el("h2", "node-head");
    const list = el("div", "node-tiles");
    group.dataset.node = head.dataset.node = node;
    head.append(el("span", "node-name", node), el("span", "node-state"));
    group.append(head, list);
    st.nodes.set(node, head);
    return { group, list };
  }

  function showNode(node, online, since) {
    const head = st.nodes.get(node);
    if (!head) return;
    head.dataset.online = head.parentElement.dataset.online = String(online);
    head.querySelector(".node-state").textContent = online ? "online" :
      `offline${since ? ` since ${clock(since)}` : ""}`;
  }

  function build(devices, methods, nodes) {
    // Only buttons this token's role may press (system.describe lists the session's methods).
    const allowed = Array.isArray(methods) ? new Set(methods) : null;
    const signature = JSON.stringify([devices, methods || null]);
    if (signature === st.signature) return;
    st.signature = signature;
    const names = Object.keys(devices);
    const old = st.devices;
    st.devices = new Map();
    st.nodes = new Map();
    ui.tiles.replaceChildren();
    document.documentElement.classList.toggle("fleet", names.some((name) => devices[name].node !== undefined));
    let lastNode;
    let into = ui.tiles;
    for (const name of names) {
      const node = devices[name].node;
      if (node !== undefined && node !== lastNode) {
        lastNode = node;
        const { group, list } = nodeGroup(node);
        ui.tiles.append(group);
        into = list;
        showNode(node, !nodes || !nodes[node] || nodes[node].online !== false);
      }
      const prev = old.get(name);
      const all = Object.keys(devices[name].actions || {});
      const d = {
        name, kind: devices[name].kind, describe: devices[name],
        actions: Object.fromEntries(Object.entries(devices[name].actions || {})
          .filter(([action]) => !allowed || allowed.has(`${name}.${action}`))),
        state: prev ? prev.state : null, online: prev ? prev.online : true, since: null, reason: null,
        lastUpdate: prev ? prev.lastUpdate : null, note: null, busy: null, observed: prev ? prev.observed : null,
        presses: prev ? prev.presses : 0,
      };
      // Nothing to press because the role may not: say so rather than show nothing.
      const drawn = [...buttonsOf(d), ...(face(d).controls || []).map((c) => c.action)];
      d.readOnly = all.some((a) => !(a in d.actions)) && !drawn.some((a) => a in d.actions);
      d.el = tile(d);
      st.devices.set(name, d);
      into.append(d.el.root);
      render(d);
    }
    if (names.length === 0) ui.tiles.append(el("p", "empty", "No devices are configured."));
    if (!st.firstTile && names.length) {
      st.firstTile = true;
      performance.mark("pictl-first-tile");
    }
  }

  function tile(d) {
    const root = el("article", "tile");
    root.dataset.device = d.name;
    root.dataset.kind = d.kind;
    const head = el("header");
    head.append(el("h2", null, title(d.describe.label || d.name)), el("span", "kind", d.kind));
    const value = el("div", "value");
    const facts = el("dl", "facts");
    const meta = el("div", "meta");
    const offline = el("div", "offline-note");
    const actions = el("div", "actions");
    const inputs = {};
    if (d.readOnly) actions.append(el("span", "readonly", "read only"));
    const button = (action, label) => {
      const b = el("button", "act", label || title(action));
      b.type = "button";
      b.dataset.action = action;
      b.dataset.label = label || title(action);
      b.title = d.actions[action].description || action;
      b.addEventListener("click", () => press(d, action));
      return b;
    };
    for (const action of buttonsOf(d)) {
      if (!(action in d.actions)) continue;
      const group = el("div", "action");
      group.append(button(action));
      actions.append(group);
    }
    for (const c of face(d).controls || []) { // an action that takes a value: a slider or a box, and Set
      if (!(c.action in d.actions)) continue;
      const group = el("div", "action control");
      const input = el("input", "param");
      input.type = c.type === "range" ? "range" : c.type === "text" ? "text" : "number";
      for (const k of ["min", "max", "step"]) if (c[k] !== undefined) input[k] = String(c[k]);
      if (c.type === "number") input.step = c.step !== undefined ? String(c.step) : "any";
      input.placeholder = c.label || c.param;
      input.setAttribute("aria-label", `${d.name} ${c.label || c.param}`);
      inputs[`${c.action}.${c.param}`] = { input, type: c.type === "text" ? "string" : "number" };
      group.append(input, button(c.action, c.type === "range" ? "Set" : title(c.action)));
      actions.append(group);
    }
    const msg = el("p", "msg");
    msg.setAttribute("role", "status");
    root.append(head, value, facts, meta, offline, actions, msg);
    return { root, value, facts, meta, offline, actions, msg, inputs };
  }

  // The extra lines a device asks for (its panel "facts"), from its state object.
  function factText(f, v) {
    if (f.as === "countdown") {
      const left = v ? (Date.parse(v) - Date.now()) / 1000 : NaN;
      return isNaN(left) ? null : `${Math.max(0, Math.ceil(left))} s`;
    }
    if (v === null || v === undefined) return f.as === "alarm" ? null : "—";
    if (f.as === "percent") return `${fmt(v)} %`;
    if (f.as === "time") return `${clock(v)} · ${age(v)}`;
    return title(String(v));
  }

  function renderFacts(d) {
    const lines = [];
    for (const f of face(d).facts || []) {
      const text = d.state && typeof d.state === "object" ? factText(f, d.state[f.field]) : null;
      if (text === null) continue;
      const dt = el("dt", null, f.label || title(f.field));
      const dd = el("dd", f.as === "alarm" ? "alarm" : null, text);
      lines.push(dt, dd);
    }
    d.el.facts.replaceChildren(...lines);
    d.el.facts.hidden = lines.length === 0;
  }

  function stateText(d) {
    const s = d.state;
    if (!s || typeof s !== "object") return { text: "…", word: "unknown" };
    if (s.state === "moving") { // commanded, not yet observed: keep showing what the contact last said
      return { text: d.observed ? title(d.observed) : "…", word: d.observed || "unknown" };
    }
    if (typeof s.state === "string") return { text: title(s.state), word: s.state };
    if ("value" in s) return { text: fmt(s.value) + (s.unit ? ` ${s.unit}` : ""), word: "value" };
    if (s.values && typeof s.values === "object") {
      const units = s.units || {};
      return { rows: Object.entries(s.values).map(([k, v]) => [title(k), `${fmt(v)}${units[k] ? " " + units[k] : ""}`]),
        word: "value" }; // several values (a meter): a line each
    }
    return { json: JSON.stringify(s, null, 1).replace(/\n\s*/g, " "), word: "unknown" };
  }

  const fmt = (v) => (typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(1)) : v === null ? "—" : String(v));

  function render(d) {
    const e = d.el;
    if (d.state && typeof d.state.state === "string" && d.state.state !== "moving") d.observed = d.state.state;
    const moving = !!(d.online && d.state && d.state.state === "moving"); // offline: its last word is stale
    const shown = stateText(d);
    if (shown.json !== undefined) {
      const pre = el("pre", "json", shown.json);
      e.value.replaceChildren(pre);
    } else if (shown.rows) {
      const list = el("dl", "values");
      list.append(...shown.rows.flatMap(([k, v]) => [el("dt", null, k), el("dd", null, v)]));
      e.value.replaceChildren(list);
    } else {
      e.value.textContent = shown.text;
    }
    e.root.dataset.state = shown.word;
    e.root.dataset.moving = moving ? (d.state.actuator ? "opening" : "closing") : "";
    e.root.dataset.online = String(!!d.online);
    e.root.classList.toggle("offline", !d.online);
    e.root.classList.toggle("busy", !!d.busy);
    renderFacts(d);
    e.offline.hidden = !!d.online;
    e.offline.textContent = d.online ? "" : `Offline${d.since ? ` since ${clock(d.since)} (${age(d.since)})` : ""}`;
    e.meta.textContent = d.lastUpdate && d.online ? `updated ${clock(d.lastUpdate)} · ${age(d.lastUpdate)}` : "";
    e.meta.hidden = !d.online; // the offline note says since when instead
    const current = d.state && d.state.state;
    for (const button of e.actions.querySelectorAll("button")) {
      const action = button.dataset.action;
      button.disabled = !d.online || (!!d.busy && !interrupts(d, action));
      button.setAttribute("aria-pressed", String((action === "open" && current === "open") ||
        (action === "close" && current === "closed") || action === current));
      button.textContent = d.busy === action ? (PROGRESS[action] || "Working…") : button.dataset.label;
      button.classList.toggle("working", d.busy === action);
    }
    // Someone (this panel or another client) commanded the door and its contact has not followed yet.
    // Why a device is offline goes in the message lines (reasons are long: "modbus plant: no reply within 0.5 s").
    const note = moving && !d.busy ? { kind: "progress", text: waiting(d, d.state.actuator ? "open" : "close") }
      : d.note || (!d.online && d.reason ? { kind: "warn", text: d.reason[0].toUpperCase() + d.reason.slice(1) } : null);
    e.msg.textContent = note ? note.text : "";
    e.msg.title = e.msg.textContent; // at most two lines on the tile (the layout never moves); all of it here
    e.msg.dataset.kind = note ? note.kind : "";
  }

  // -- actions ------------------------------------------------------------------------------------
  function press(d, action) {
    if (d.busy && !interrupts(d, action)) return;
    const params = {};
    for (const [id, { input, type }] of Object.entries(d.el.inputs)) {
      const [a, param] = id.split(".");
      if (a !== action) continue;
      if (input.value === "") {
        d.note = { kind: "error", text: `Enter ${param} first.` };
        return render(d);
      }
      params[param] = type === "number" ? Number(input.value) : input.value;
    }
    const key = randomKey();
    params.request_key = key;
    d.busy = action;
    d.presses += 1; // a later press (an interruption) owns the tile's message
    d.note = { kind: "progress", text: waiting(d, action) };
    render(d);
    const entry = { device: d.name, action, params, started: Date.now(), press: d.presses };
    st.inflight.set(key, entry);
    setTimeout(() => finish(key, entry, null, { code: 0, message: "" }), ACTION_GIVE_UP_MS);
    send(key, entry);
  }

  function send(key, entry) {
    if (!st.live) {
      const d = st.devices.get(entry.device);
      if (d) {
        d.note = { kind: "progress", text: "Link down — will resend when back (it will not act twice)" };
        render(d);
      }
      return; // onOpen resends everything in st.inflight
    }
    rpc(`${entry.device}.${entry.action}`, entry.params, 0).then(
      (result) => finish(key, entry, result, null),
      (err) => {
        if (err.linkLost) return; // resent with the same request_key after the reconnect
        finish(key, entry, null, err);
      });
  }

  function finish(key, entry, result, err) {
    if (!st.inflight.has(key)) return;
    st.inflight.delete(key);
    const d = st.devices.get(entry.device);
    if (!d || (entry.press !== undefined && entry.press !== d.presses)) return; // interrupted by a later press
    d.busy = null;
    if (result) {
      if (result.state !== undefined && d.state && typeof d.state === "object" && "state" in d.state) {
        d.state = { ...d.state, state: result.state };
      }
      const secs = typeof result.elapsed_ms === "number" ? ` in ${(result.elapsed_ms / 1000).toFixed(1)} s` : "";
      const what = result.changed === false ? `Already ${result.state}` : `${DONE[entry.action] || title(entry.action)}`;
      d.note = { kind: "ok", text: `✓ ${what} — confirmed${result.changed === false ? "" : secs}` +
        (result.replayed ? " (after reconnect)" : "") };
    } else {
      d.note = { kind: "error", text: errorText(d, entry.action, err) };
    }
    render(d);
  }

  function errorText(d, action, err) {
    const data = err.data || {};
    switch (err.code) {
      case -32002: {
        const observed = data.observed === "unknown" || data.observed === undefined ? "unreadable" : `still ${data.observed}`;
        let text = `${d.name} did not ${VERBS[action] || action} — ${proof(d)} ${observed}`;
        if (data.expected && data.observed === data.expected) text = `${d.name} did not ${VERBS[action] || action} in time`;
        if (data.recovery) text += `. ${title(data.recovery)}.`;
        return text;
      }
      case -32004:
        return `${d.name} is offline${data.since ? ` since ${clock(data.since)}` : ""} — nothing was done`;
      case -32003:
        return `${d.name} is busy with an earlier action — try again`;
      case -32005:
        return `Too many presses — wait ${data.retry_after_s ? Math.ceil(data.retry_after_s) + " s" : "a moment"}`;
      case -32001:
        return "This panel is not allowed to do that";
      case 0:
        return `No answer within ${ACTION_GIVE_UP_MS / 1000} s — check the ${d.name} before pressing again`;
      default:
        return `Failed: ${err.message || "unknown error"}`;
    }
  }

  // -- login --------------------------------------------------------------------------------------
  function showLogin(message) {
    ui.login.hidden = false;
    ui.logout.hidden = true;
    ui.loginError.textContent = message || "";
    setLink("locked", "Not connected");
    ui.token.focus();
  }

  ui.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = ui.token.value.trim();
    if (!token) return;
    localStorage.setItem(TOKEN_KEY, token);
    ui.token.value = "";
    ui.login.hidden = true;
    st.stopped = false;
    st.backoff = BACKOFF_MIN_MS;
    connect();
  });

  ui.logout.addEventListener("click", () => {
    localStorage.removeItem(TOKEN_KEY);
    st.stopped = true;
    clearTimeout(st.timer);
    if (st.ws) st.ws.close();
    st.ws = null;
    st.live = false;
    st.inflight.clear();
    st.devices = new Map();
    st.signature = null;
    ui.tiles.replaceChildren();
    showLogin("Logged out.");
  });

  setInterval(() => {
    tickLink();
    for (const d of st.devices.values()) render(d);
  }, 1000);

  if (localStorage.getItem(TOKEN_KEY)) connect();
  else showLogin("");
})();
