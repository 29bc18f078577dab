// meshtrace viewer UI: a trace list ("/") and a trace waterfall ("/trace/<id>"), rendered from the
// viewer's JSON API. Plain DOM code, no dependencies, so it works offline from the binary.
"use strict";

(function () {
  const PALETTE = [
    "#3b82f6", "#10b981", "#f59e0b", "#8b5cf6", "#ec4899",
    "#14b8a6", "#f97316", "#6366f1", "#84cc16", "#06b6d4",
  ];
  const app = document.getElementById("app");
  let serviceColors = new Map();

  // ---------- small helpers ----------

  // Builds an element; attributes starting with "on" become listeners. Text is never parsed as
  // HTML, so span names and attribute values cannot inject markup.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value);
      } else if (key === "style" && typeof value === "object") {
        // setProperty also handles custom properties such as --service-color.
        for (const [name, v] of Object.entries(value)) el.style.setProperty(name, String(v));
      } else {
        el.setAttribute(key, value === true ? "" : String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  async function getJson(url) {
    const response = await fetch(url, { cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      /* not JSON */
    }
    if (!response.ok) {
      throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
    }
    return body;
  }

  function formatDuration(ms) {
    if (ms >= 1000) return `${(ms / 1000).toFixed(ms >= 10000 ? 1 : 2)}s`;
    if (ms >= 100) return `${ms.toFixed(0)}ms`;
    if (ms >= 10) return `${ms.toFixed(1)}ms`;
    if (ms >= 1) return `${ms.toFixed(2)}ms`;
    return `${(ms * 1000).toFixed(0)}µs`;
  }

  function formatTickMs(ms, step) {
    const decimals = step >= 1 ? 0 : Math.min(3, Math.ceil(-Math.log10(step)));
    return `${ms.toFixed(decimals)}ms`;
  }

  function formatClock(unixMs) {
    const date = new Date(unixMs);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  }

  function formatAgo(unixMs) {
    const seconds = Math.max(0, (Date.now() - unixMs) / 1000);
    if (seconds < 60) return `${Math.floor(seconds)}s ago`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
    return new Date(unixMs).toLocaleDateString();
  }

  // A 1/2/5 x 10^n step giving about `count` ticks over `total`.
  function niceStep(total, count) {
    const raw = total / count;
    if (!(raw > 0)) return 1;
    const magnitude = Math.pow(10, Math.floor(Math.log10(raw)));
    const normalized = raw / magnitude;
    const nice = normalized <= 1 ? 1 : normalized <= 2 ? 2 : normalized <= 5 ? 5 : 10;
    return nice * magnitude;
  }

  function assignColors(services) {
    serviceColors = new Map();
    [...services].sort().forEach((service, i) => serviceColors.set(service, PALETTE[i % PALETTE.length]));
  }

  function colorOf(service) {
    if (!serviceColors.has(service)) {
      serviceColors.set(service, PALETTE[serviceColors.size % PALETTE.length]);
    }
    return serviceColors.get(service);
  }

  function serviceChip(service) {
    return h("span", { class: "chip", style: { "--service-color": colorOf(service) } },
      h("span", { class: "chip-dot" }), service);
  }

  function showError(message) {
    app.replaceChildren(h("div", { class: "card error-box" },
      h("strong", {}, "Could not load data. "), message));
  }

  function formatValue(value) {
    if (typeof value === "string") return value;
    return JSON.stringify(value);
  }

  // ---------- trace list ----------

  async function renderList() {
    document.title = "Traces · meshtrace viewer";
    const params = new URLSearchParams(location.search);
    const service = params.get("service") || "";
    const limit = params.get("limit") || "50";

    let services;
    let traces;
    try {
      const query = new URLSearchParams({ limit });
      if (service) query.set("service", service);
      [services, traces] = await Promise.all([
        getJson("/api/services").then((r) => r.services),
        getJson(`/api/traces?${query}`).then((r) => r.traces),
      ]);
    } catch (error) {
      showError(error.message);
      return;
    }
    assignColors(services);

    const navigate = (changes) => {
      const next = new URLSearchParams(location.search);
      for (const [key, value] of Object.entries(changes)) {
        if (value) next.set(key, value);
        else next.delete(key);
      }
      const search = next.toString();
      location.search = search ? `?${search}` : "";
    };

    const serviceSelect = h("select", { id: "service-filter", onchange: (e) => navigate({ service: e.target.value }) },
      h("option", { value: "" }, `All services (${services.length})`),
      services.map((s) => h("option", { value: s, selected: s === service }, s)));
    const limitSelect = h("select", { id: "limit", onchange: (e) => navigate({ limit: e.target.value }) },
      ["20", "50", "100", "500"].map((n) => h("option", { value: n, selected: n === limit }, `${n} traces`)));

    const toolbar = h("div", { class: "toolbar card" },
      h("label", {}, "Service ", serviceSelect),
      h("label", {}, "Show ", limitSelect),
      h("button", { type: "button", class: "button", onclick: () => renderList() }, "Refresh"),
      h("span", { class: "legend" }, services.map(serviceChip)));

    const maxDuration = Math.max(1e-9, ...traces.map((t) => t.durationMs));
    const rows = traces.map((trace) => {
      const href = `/trace/${trace.traceId}`;
      return h("a", { class: `trace-row${trace.errorCount ? " has-error" : ""}`, href, "data-trace-id": trace.traceId },
        h("div", { class: "trace-main" },
          h("div", { class: "trace-title" },
            h("span", { class: "svc-name", style: { color: colorOf(trace.rootService) } }, trace.rootService || "?"),
            h("span", { class: "op-name" }, trace.rootName || "(missing root span)"),
            trace.rootComplete ? null : h("span", { class: "badge warn", title: "The root span has not been received" }, "partial"),
          ),
          h("div", { class: "trace-meta" },
            h("span", { class: "mono" }, trace.traceId.slice(0, 16)),
            h("span", {}, `${trace.spanCount} span${trace.spanCount === 1 ? "" : "s"}`),
            trace.errorCount
              ? h("span", { class: "badge error" }, `${trace.errorCount} error${trace.errorCount === 1 ? "" : "s"}`)
              : null,
            h("span", { class: "chips" }, trace.services.map(serviceChip)),
          ),
        ),
        h("div", { class: "trace-duration" },
          h("div", { class: "duration-text" }, formatDuration(trace.durationMs)),
          h("div", { class: "duration-track" },
            h("div", { class: "duration-fill", style: { width: `${Math.max(1, (100 * trace.durationMs) / maxDuration)}%` } })),
        ),
        h("div", { class: "trace-time" },
          h("div", {}, formatClock(trace.startTimeUnixMs)),
          h("div", { class: "muted" }, formatAgo(trace.startTimeUnixMs)),
        ),
      );
    });

    const heading = h("div", { class: "list-heading" },
      h("h1", {}, "Traces"),
      h("span", { class: "muted", id: "trace-count" },
        `${traces.length} most recent${service ? ` involving ${service}` : ""}`));

    app.replaceChildren(toolbar, heading,
      traces.length
        ? h("div", { class: "card trace-list", id: "trace-list" }, rows)
        : h("div", { class: "card placeholder", id: "trace-list" },
          "No traces yet. Send OTLP to this viewer (gRPC :4317, HTTP :4318 by default), then refresh."));
  }

  // ---------- trace waterfall ----------

  // Orders spans depth-first under their parents (children by start time); spans whose parent
  // is missing become extra roots so nothing is hidden.
  function buildTree(spans) {
    const byId = new Map(spans.map((s) => [s.spanId, s]));
    const children = new Map();
    const roots = [];
    for (const span of spans) {
      if (span.parentSpanId && byId.has(span.parentSpanId) && span.parentSpanId !== span.spanId) {
        if (!children.has(span.parentSpanId)) children.set(span.parentSpanId, []);
        children.get(span.parentSpanId).push(span);
      } else {
        roots.push(span);
      }
    }
    const byStart = (a, b) => a.startOffsetMs - b.startOffsetMs;
    roots.sort(byStart);
    for (const list of children.values()) list.sort(byStart);
    const ordered = [];
    const seen = new Set();
    const visit = (span, depth) => {
      if (seen.has(span.spanId)) return;
      seen.add(span.spanId);
      ordered.push({ span, depth, childCount: (children.get(span.spanId) || []).length });
      for (const child of children.get(span.spanId) || []) visit(child, depth + 1);
    };
    for (const root of roots) visit(root, 0);
    // Cycles (malformed input) would leave spans unvisited: show them flat at the end.
    for (const span of spans) if (!seen.has(span.spanId)) visit(span, 0);
    return ordered;
  }

  function kindBadge(kind) {
    return h("span", { class: `kind kind-${kind}` }, kind);
  }

  // A meshtrace proxy emits a SERVER/CLIENT pair on each side (inbound for its own app,
  // outbound for the app's calls): the side tells the two pairs of one service apart.
  function directionBadge(span) {
    const side = span.attributes && span.attributes["meshtrace.direction"];
    if (side !== "inbound" && side !== "outbound") return null;
    return h("span", { class: "direction", title: `the proxy's ${side} side` }, side === "inbound" ? "in" : "out");
  }

  // A proxy that parented an outbound request by inference (the application forwarded no trace
  // context) says how: a request id ties it exactly, "sole in flight" is a good guess.
  const INFERRED_SOURCES = { request_id: "request id", sole_in_flight: "sole request in flight" };

  function inferredBadge(span) {
    const source = span.attributes && span.attributes["meshtrace.context.source"];
    if (!Object.prototype.hasOwnProperty.call(INFERRED_SOURCES, source)) return null;
    return h("span", {
      class: "badge inferred",
      title: `Parent inferred by the proxy (${INFERRED_SOURCES[source]}): the application did not forward trace headers`,
    }, "inferred");
  }

  function linksBadge(span) {
    const count = (span.links || []).length;
    if (!count) return null;
    return h("span", { class: "badge links", title: "Linked to candidate parents (open the span for the links)" }, `${count} link${count === 1 ? "" : "s"}`);
  }

  function linkList(span) {
    const links = span.links || [];
    if (!links.length) return null;
    return h("div", { class: "kv-block" }, h("h4", {}, "Links"),
      h("ul", { class: "links" }, links.map((link) =>
        h("li", {}, h("a", {
          class: "mono span-link",
          href: `/trace/${link.traceId}#span=${link.spanId}`,
          title: "Open the linked span",
        }, `${link.traceId.slice(0, 16)}… / ${link.spanId}`)))));
  }

  function attributeTable(title, attributes) {
    const entries = Object.entries(attributes || {});
    if (!entries.length) return null;
    return h("div", { class: "kv-block" },
      h("h4", {}, title),
      h("table", { class: "kv" },
        h("tbody", {}, entries.map(([key, value]) =>
          h("tr", {}, h("th", {}, key), h("td", { class: "mono" }, formatValue(value)))))));
  }

  function spanDetails(span) {
    const status = span.status.code === "unset" ? "unset" : span.status.code;
    return h("div", { class: "span-detail", "data-detail-for": span.spanId },
      h("div", { class: "detail-head" },
        h("span", { class: "detail-title" }, serviceChip(span.service), " ", span.name),
        h("span", { class: "muted" }, `Start ${formatDuration(span.startOffsetMs)} · Duration ${formatDuration(span.durationMs)}`),
      ),
      h("div", { class: "detail-grid" },
        h("table", { class: "kv" }, h("tbody", {},
          h("tr", {}, h("th", {}, "span id"), h("td", { class: "mono" }, span.spanId)),
          h("tr", {}, h("th", {}, "parent"), h("td", { class: "mono" }, span.parentSpanId || "— (root)")),
          h("tr", {}, h("th", {}, "kind"), h("td", {}, kindBadge(span.kind))),
          h("tr", {}, h("th", {}, "status"), h("td", { class: span.status.code === "error" ? "status-error" : "" },
            status, span.status.message ? `: ${span.status.message}` : "")),
        )),
        attributeTable("Attributes", span.attributes),
        linkList(span),
        span.events.length
          ? h("div", { class: "kv-block" }, h("h4", {}, "Events"),
            h("table", { class: "kv" }, h("tbody", {}, span.events.map((event) =>
              h("tr", {}, h("th", {}, formatDuration(event.offsetMs)),
                h("td", {}, event.name, " ", h("span", { class: "mono muted" },
                  Object.entries(event.attributes).map(([k, v]) => `${k}=${formatValue(v)}`).join(" "))))))))
          : null,
        attributeTable("Process (resource)", span.resource),
      ),
    );
  }

  async function renderTrace(traceId) {
    document.title = `Trace ${traceId.slice(0, 8)} · meshtrace viewer`;
    let trace;
    let services;
    try {
      [trace, services] = await Promise.all([
        getJson(`/api/traces/${encodeURIComponent(traceId)}`),
        getJson("/api/services").then((r) => r.services).catch(() => []),
      ]);
    } catch (error) {
      showError(error.message);
      return;
    }
    assignColors(services.length ? services : trace.services);
    document.title = `${trace.rootService}: ${trace.rootName} · meshtrace viewer`;

    const total = Math.max(trace.durationMs, 1e-6);
    const step = niceStep(total, 5);
    const ticks = [];
    for (let t = 0; t <= total + step * 1e-9; t += step) ticks.push(t);
    const pct = (ms) => `${Math.min(100, Math.max(0, (100 * ms) / total))}%`;
    const ordered = buildTree(trace.spans);
    const maxDepth = ordered.reduce((m, r) => Math.max(m, r.depth), 0);

    const header = h("section", { class: "card trace-header" },
      h("div", { class: "trace-heading" },
        h("h1", {},
          h("span", { class: "svc-name", style: { color: colorOf(trace.rootService) } }, trace.rootService),
          h("span", { class: "op-name" }, trace.rootName || "(missing root span)")),
        h("span", { class: "mono muted", id: "trace-id" }, trace.traceId)),
      h("dl", { class: "stats" },
        h("div", {}, h("dt", {}, "Start"), h("dd", {}, `${new Date(trace.startTimeUnixMs).toLocaleDateString()} ${formatClock(trace.startTimeUnixMs)}`)),
        h("div", {}, h("dt", {}, "Duration"), h("dd", {}, formatDuration(trace.durationMs))),
        h("div", {}, h("dt", {}, "Services"), h("dd", {}, String(trace.services.length))),
        h("div", {}, h("dt", {}, "Depth"), h("dd", {}, String(maxDepth + 1))),
        h("div", {}, h("dt", {}, "Spans"), h("dd", {}, String(trace.spanCount))),
        h("div", {}, h("dt", {}, "Errors"), h("dd", { class: trace.errorCount ? "status-error" : "" }, String(trace.errorCount))),
      ),
      h("div", { class: "legend" }, trace.services.map(serviceChip)),
      trace.rootComplete ? null : h("p", { class: "badge warn" }, "The root span of this trace has not been received; spans with a missing parent are shown at the top level."),
      trace.droppedSpans ? h("p", { class: "badge warn" }, `${trace.droppedSpans} spans were dropped (per-trace limit).`) : null,
    );

    const axis = h("div", { class: "wf-row wf-axis" },
      h("div", { class: "wf-name wf-axis-title" }, "Service & operation"),
      h("div", { class: "wf-timeline" },
        ticks.map((t, i) => h("span", {
          class: `tick${i === 0 ? " first" : ""}${t / total > 0.93 && i > 0 ? " last" : ""}`,
          style: { left: pct(t) },
        }, formatTickMs(t, step)))));

    const grid = h("div", { class: "wf-grid", "aria-hidden": "true" },
      ticks.map((t) => h("span", { class: "gridline", style: { left: pct(t) } })));

    const collapsed = new Set();
    const rowsById = new Map();
    const body = h("div", { class: "wf-body" }, grid);

    const applyCollapse = () => {
      const hiddenParents = new Set();
      for (const { span } of ordered) {
        const row = rowsById.get(span.spanId);
        const hidden = span.parentSpanId && hiddenParents.has(span.parentSpanId);
        if (hidden || collapsed.has(span.spanId)) hiddenParents.add(span.spanId);
        row.row.hidden = !!hidden;
        if (hidden && row.detail) row.detail.hidden = true;
        row.toggle && (row.toggle.textContent = collapsed.has(span.spanId) ? "▸" : "▾");
      }
    };

    for (const { span, depth, childCount } of ordered) {
      const color = colorOf(span.service);
      const isError = span.status.code === "error";
      const left = (100 * span.startOffsetMs) / total;
      const width = (100 * span.durationMs) / total;
      // Duration label: right of the bar if there is room, else left of it, else inside it.
      const labelPlace = left + width <= 74 ? "right" : left >= 24 ? "left" : "inside";
      const entry = { row: null, detail: null, toggle: null };
      const toggle = childCount
        ? h("button", {
          type: "button", class: "toggle", title: "Collapse / expand children",
          onclick: (e) => {
            e.stopPropagation();
            if (collapsed.has(span.spanId)) collapsed.delete(span.spanId);
            else collapsed.add(span.spanId);
            applyCollapse();
          },
        }, "▾")
        : h("span", { class: "toggle-spacer" });
      entry.toggle = childCount ? toggle : null;

      const row = h("div", {
        class: `wf-row span-row${isError ? " error" : ""}`,
        role: "button", tabindex: "0", "aria-expanded": "false",
        title: `${span.service} · ${span.name} · starts at +${formatDuration(span.startOffsetMs)} · lasts ${formatDuration(span.durationMs)}`,
        onclick: () => {
          if (entry.detail) {
            entry.detail.hidden = !entry.detail.hidden;
          } else {
            entry.detail = spanDetails(span);
            row.after(entry.detail);
          }
          row.classList.toggle("selected", !entry.detail.hidden);
          row.setAttribute("aria-expanded", String(!entry.detail.hidden));
        },
        onkeydown: (e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            row.click();
          }
        },
      },
      h("div", { class: "wf-name", style: { "--depth": depth, "--service-color": color } },
        toggle,
        h("span", { class: "svc-name", style: { color } }, span.service),
        h("span", { class: "op-name" }, span.name),
        kindBadge(span.kind),
        directionBadge(span),
        inferredBadge(span),
        linksBadge(span),
        isError ? h("span", { class: "error-icon", title: span.status.message || "error" }, "!") : null),
      h("div", { class: "wf-timeline" },
        h("div", {
          class: `span-bar${isError ? " error" : ""}`,
          "data-span-id": span.spanId,
          style: { left: `${left}%`, width: `${width}%`, "--service-color": color },
        }),
        h("span", {
          class: `bar-label ${labelPlace}`,
          style: labelPlace === "right" ? { left: `${left + width}%` } : { right: `${labelPlace === "left" ? 100 - left : 100 - left - width}%` },
        }, `+${formatDuration(span.startOffsetMs)} · `, h("strong", {}, formatDuration(span.durationMs)),
        isError && span.status.message ? ` · ${span.status.message}` : "")));
      entry.row = row;
      rowsById.set(span.spanId, entry);
      body.append(row);
    }

    const waterfall = h("section", { class: "card waterfall", id: "waterfall" }, axis, body);
    app.replaceChildren(
      h("a", { class: "back", href: "/" }, "← All traces"),
      header,
      waterfall);

    // "#span=<id>" opens that span's details: a link can point at the interesting hop.
    const selected = location.hash.match(/^#span=([0-9a-f]{16})$/);
    const target = selected && rowsById.get(selected[1]);
    if (target) {
      target.row.click();
      target.row.scrollIntoView({ block: "center" });
    }
  }

  // ---------- routing ----------

  document.getElementById("jump-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const id = document.getElementById("jump-input").value.trim().toLowerCase();
    if (id) location.href = `/trace/${encodeURIComponent(id)}`;
  });

  const match = location.pathname.match(/^\/trace\/([^/]+)\/?$/);
  if (match) {
    renderTrace(decodeURIComponent(match[1]));
  } else {
    renderList();
  }
})();
