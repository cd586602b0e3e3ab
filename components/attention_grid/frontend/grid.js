// Attention grid: every head's map for the patch under the pointer, redrawn in the browser.
//
// The page sends one view once (explorer/attention_payload.py): for each panel (head) and each
// query row, N uint8 codes with a per-row low and step, value = low + code * step. Hovering a
// patch redraws every panel from those numbers: no message to the server. A click pins the
// query; only when the page asks for it (args.report) is the pinned patch sent back, debounced.
//
// Streamlit's component protocol (v1) is spoken here directly with postMessage:
//   -> streamlit:componentReady {apiVersion: 1}
//   <- streamlit:render {args}            (bytes arguments arrive as Uint8Array)
//   -> streamlit:setComponentValue {value, dataType: "json"}
//   -> streamlit:setFrameHeight {height}
// Every text shown comes from the page or the data and is set with textContent, never as HTML.
"use strict";

(function () {
  const CLS_ROW = -1;
  const REPORT_DELAY_MS = 250;
  const COLOUR_STOPS = {
    // plotly's Inferno (the app's figures use it), from 0 to 1
    inferno: ["#000004", "#1b0c41", "#4a0c6b", "#781c6d", "#a52c60", "#cf4446", "#ed6925", "#fb9b06",
      "#f7d13d", "#fcffa4"],
    // diverging: red for negative, light grey at 0, blue for positive (as the mixing figure's reversed RdBu)
    rdbu: ["#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3",
      "#2166ac", "#053061"],
  };

  const root = document.getElementById("root");
  const instance = Math.random().toString(36).slice(2, 10);

  const st = {
    args: null,
    meta: null,
    dataId: null,
    codes: null, low: null, step: null, extra: null,
    rowOf: new Map(),
    image: null, imageId: null,
    pinned: 0, preview: null, head: 0, nonce: null,
    hoverCls: null, outlineOnly: null, awaiting: null,
    layoutKey: "", views: { query: [], cls: [] }, status: null, notice: null,
    reportTimer: null, lastReported: null, seq: 0, width: 0, lastHeight: 0,
  };
  // what tests and the benchmark read: draws so far, hover timings (ms), the query on screen
  const probe = { draws: 0, hovers: [], reports: 0, query: null, head: null, ready: false };
  window.__attentionGrid = probe;

  // ---------------------------------------------------------------- protocol
  function send(type, data) {
    window.parent.postMessage(Object.assign({ isStreamlitMessage: true, type: type }, data), "*");
  }

  function reportHeight() {
    const height = Math.ceil(root.getBoundingClientRect().height) + 4;
    if (height !== st.lastHeight) {
      st.lastHeight = height;
      send("streamlit:setFrameHeight", { height: height });
    }
  }

  function scheduleReport() {
    const a = st.args;
    if (!a || !(a.report || st.meta.fallback)) return;
    clearTimeout(st.reportTimer);
    st.reportTimer = setTimeout(function () {
      const key = st.pinned + ":" + st.head;
      if (key === st.lastReported) return;
      st.lastReported = key;
      st.seq += 1;
      probe.reports += 1;
      send("streamlit:setComponentValue", {
        value: { query: st.pinned, head: st.head, seq: instance + ":" + st.seq },
        dataType: "json",
      });
    }, REPORT_DELAY_MS);
  }

  // ---------------------------------------------------------------- data
  function floats(u8) {
    // a copy: protobuf's bytes may start at an offset that a Float32Array cannot view
    if (!u8 || u8.byteLength === 0) return new Float32Array(0);
    const copy = new Uint8Array(u8.byteLength);
    copy.set(u8);
    return new Float32Array(copy.buffer);
  }

  function loadData(a) {
    const meta = a.meta;
    st.meta = meta;
    if (meta.id === st.dataId) return;
    st.dataId = meta.id;
    probe.nbytes = meta.nbytes;
    probe.fallback = meta.fallback;
    probe.panels = meta.panels;
    probe.grid = meta.grid;
    probe.views = (probe.views || 0) + 1;
    st.codes = a.codes instanceof Uint8Array ? a.codes : new Uint8Array(0);
    st.low = floats(a.low);
    st.step = floats(a.step);
    st.extra = floats(a.extra);
    st.rowOf = new Map();
    meta.rows.forEach(function (q, r) { st.rowOf.set(q, r); });
    const img = a.image;
    if (img && img.byteLength > 0) {
      const id = meta.id;
      createImageBitmap(new Blob([img], { type: "image/jpeg" })).then(function (bitmap) {
        if (st.dataId !== id) return;
        st.image = bitmap;
        drawAll();
      }, function () { st.image = null; });
    } else {
      st.image = null;
    }
  }

  // values of query q's row in panel k, as a fresh Float32Array of N numbers (null: not in this view)
  function rowValues(k, q) {
    const r = st.rowOf.get(q);
    if (r === undefined) return null;
    const meta = st.meta;
    const N = meta.grid[0] * meta.grid[1];
    const R = meta.rows.length;
    const index = k * R + r;
    const lo = st.low[index], step = st.step[index];
    const base = index * N;
    const out = new Float32Array(N);
    for (let i = 0; i < N; i++) out[i] = lo + st.codes[base + i] * step;
    return out;
  }

  function extraValues(k, q) {
    const E = st.meta.extra_names.length;
    const r = st.rowOf.get(q);
    if (!E || r === undefined) return [];
    const start = (k * st.meta.rows.length + r) * E;
    return Array.from(st.extra.subarray(start, start + E));
  }

  // ---------------------------------------------------------------- colours
  const luts = {};
  function lut(name) {
    if (luts[name]) return luts[name];
    const stops = (COLOUR_STOPS[name] || COLOUR_STOPS.inferno).map(function (hex) {
      return [1, 3, 5].map(function (i) { return parseInt(hex.slice(i, i + 2), 16); });
    });
    const table = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const x = (i / 255) * (stops.length - 1);
      const j = Math.min(Math.floor(x), stops.length - 2);
      const f = x - j;
      for (let c = 0; c < 3; c++) table[i * 3 + c] = stops[j][c] + (stops[j + 1][c] - stops[j][c]) * f;
    }
    luts[name] = table;
    return table;
  }

  function range(values, colour, shared) {
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < values.length; i++) {
      if (values[i] < lo) lo = values[i];
      if (values[i] > hi) hi = values[i];
    }
    if (shared) { lo = shared[0]; hi = shared[1]; }
    if (colour === "rdbu") {
      const b = Math.max(Math.abs(lo), Math.abs(hi)) || 1;
      return [-b, b];
    }
    if (hi <= lo) hi = lo + 1e-12; // each panel from its own minimum to its maximum, as the app's plotly maps
    return [lo, hi];
  }

  function fmt(v) {
    if (v === undefined || v === null || !isFinite(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e4)) return v.toExponential(2);
    return v.toFixed(a < 0.1 ? 4 : 3);
  }

  // ---------------------------------------------------------------- layout
  function text(tag, cls, content) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    if (content !== undefined) el.textContent = String(content);
    return el;
  }

  function fill(template, values) {
    // "{query}"-style placeholders in a page-supplied label; the result is shown as text only
    return String(template || "").replace(/\{(\w+)\}/g, function (m, name) {
      return Object.prototype.hasOwnProperty.call(values, name) ? String(values[name]) : m;
    });
  }

  function makePanel(kind, k, size, big) {
    const meta = st.meta;
    const [gh, gw] = meta.grid;
    const fig = document.createElement("figure");
    if (big) fig.className = "big";
    const title = text("div", "title");
    const canvas = document.createElement("canvas");
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(32, Math.floor(size));
    const h = Math.max(8, Math.round((w * gh) / gw));
    fig.style.width = w + 4 + "px"; // long titles are cut with an ellipsis, never widen the panel
    canvas.style.width = w + "px";
    canvas.style.height = h + "px";
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(h * dpr);
    canvas.dataset.kind = kind;
    canvas.dataset.panel = String(k);
    const numbers = text("div", "numbers");
    fig.append(title, canvas, numbers);
    const small = document.createElement("canvas");
    small.width = gw;
    small.height = gh;
    const view = {
      kind: kind, k: k, big: big, fig: fig, title: title, canvas: canvas, numbers: numbers,
      ctx: canvas.getContext("2d"), small: small, sctx: small.getContext("2d"),
      pixels: new ImageData(gw, gh),
    };
    canvas.addEventListener("pointermove", function (e) { onMove(view, e); });
    canvas.addEventListener("pointerleave", function () { onLeave(view); });
    canvas.addEventListener("click", function (e) { onClick(view, e); });
    return view;
  }

  function layout() {
    const a = st.args, meta = st.meta;
    const width = Math.max(240, Math.floor(root.clientWidth || window.innerWidth));
    const key = JSON.stringify([width, meta.grid, meta.panels, a.sections, a.labels, meta.fallback]);
    if (key === st.layoutKey) return;
    st.layoutKey = key;
    st.width = width;
    root.replaceChildren();
    st.views = { query: [], cls: [] };
    if (a.labels && a.labels.caption) root.append(text("div", "caption", a.labels.caption));
    st.notice = text("div", "notice", a.notice || "");
    root.append(st.notice);
    const labels = (a.labels && a.labels.panels) || [];
    (a.sections || []).forEach(function (sec) {
      const section = document.createElement("section");
      section.dataset.kind = sec.kind;
      if (sec.title) section.append(text("h4", "", sec.title));
      if (sec.kind === "query") {
        st.status = text("div", "status");
        section.append(st.status);
      }
      const row = text("div", "row");
      const useBig = !!sec.big;
      const narrow = width < 560;
      let rest = width;
      if (useBig) {
        const bigSize = meta.panels === 1 ? Math.min(width, 460) : (narrow ? width : Math.min(460, Math.floor(width * 0.45)));
        const view = makePanel(sec.kind, -1, bigSize - 4, true);
        st.views[sec.kind].push(view);
        row.append(view.fig);
        rest = narrow ? width : width - bigSize - 16;
      }
      if (!useBig || meta.panels > 1) {
        const cols = Math.max(1, Math.min(meta.panels, sec.cols || 4));
        const size = Math.max(56, Math.min(useBig ? 200 : 240, Math.floor((rest - (cols - 1) * 8) / cols) - 4));
        const grid = text("div", "grid");
        grid.style.gridTemplateColumns = "repeat(" + cols + ", " + (size + 4) + "px)";
        for (let k = 0; k < meta.panels; k++) {
          const view = makePanel(sec.kind, k, size, false);
          view.title.textContent = labels[k] !== undefined ? String(labels[k]) : "panel " + k;
          st.views[sec.kind].push(view);
          grid.append(view.fig);
        }
        row.append(grid);
      }
      section.append(row);
      root.append(section);
    });
  }

  // ---------------------------------------------------------------- drawing
  function paint(view, values, lims, colour, outlines) {
    const [gh, gw] = st.meta.grid;
    const ctx = view.ctx, cw = view.canvas.width, ch = view.canvas.height;
    ctx.imageSmoothingEnabled = true;
    if (st.image) {
      ctx.drawImage(st.image, 0, 0, cw, ch);
    } else {
      ctx.fillStyle = "#000";
      ctx.fillRect(0, 0, cw, ch);
    }
    if (values) {
      const table = lut(colour);
      const px = view.pixels.data;
      const alpha = st.image ? 140 : 255; // 0.55 over the photo, as the app's plotly maps
      const span = lims[1] - lims[0];
      for (let i = 0; i < values.length; i++) {
        const t = Math.max(0, Math.min(255, Math.round(((values[i] - lims[0]) / span) * 255)));
        px[i * 4] = table[t * 3];
        px[i * 4 + 1] = table[t * 3 + 1];
        px[i * 4 + 2] = table[t * 3 + 2];
        px[i * 4 + 3] = alpha;
      }
      view.sctx.putImageData(view.pixels, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(view.small, 0, 0, cw, ch);
    }
    const cellW = cw / gw, cellH = ch / gh;
    outlines.forEach(function (o) {
      if (o.patch === null || o.patch === undefined) return;
      const r = Math.floor(o.patch / gw), c = o.patch % gw;
      const lw = Math.max(2, Math.round((window.devicePixelRatio || 1) * (view.big ? 3 : 2)));
      ctx.lineWidth = lw;
      ctx.strokeStyle = o.colour;
      ctx.setLineDash(o.dash ? [lw * 2, lw] : []);
      ctx.strokeRect(c * cellW + lw / 2, r * cellH + lw / 2, cellW - lw, cellH - lw);
    });
    ctx.setLineDash([]);
  }

  function argmax(values) {
    let best = 0;
    for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
    return best;
  }

  function sharedRange(kind, q) {
    const a = st.args;
    if (!(a.colour && a.colour.shared)) return null;
    let lo = Infinity, hi = -Infinity;
    for (let k = 0; k < st.meta.panels; k++) {
      const v = kind === "cls" ? rowValues(k, CLS_ROW) : rowValues(k, q);
      if (!v) continue;
      for (let i = 0; i < v.length; i++) { if (v[i] < lo) lo = v[i]; if (v[i] > hi) hi = v[i]; }
    }
    return isFinite(lo) ? [lo, hi] : null;
  }

  function drawQuery() {
    const views = st.views.query;
    if (!views.length) return;
    const a = st.args, meta = st.meta;
    const colour = (a.colour && a.colour.map) || "inferno";
    const labels = (a.labels && a.labels.panels) || [];
    const gw = meta.grid[1];
    const previewing = st.preview !== null && !meta.fallback;
    const q = previewing ? st.preview : st.pinned;
    const shared = sharedRange("query", q);
    const names = meta.extra_names || [];
    views.forEach(function (view) {
      const k = view.big ? st.head : view.k;
      const values = rowValues(k, q);
      const outlines = [{ patch: q, colour: "#00ffff" }];
      if (meta.fallback && st.outlineOnly !== null) outlines.push({ patch: st.outlineOnly, colour: "#ffffff", dash: true });
      paint(view, values, values ? range(values, colour, shared) : [0, 1], colour, outlines);
      if (view.big) {
        view.title.textContent = fill(a.labels && a.labels.big_title, {
          query: q, panel: labels[k] !== undefined ? labels[k] : "panel " + k,
        });
      } else {
        view.fig.classList.toggle("selected", view.k === st.head && meta.panels > 1);
      }
      if (!values) {
        view.numbers.textContent = st.awaiting !== null ? "waiting for the server…" : "not in this view";
        return;
      }
      const best = argmax(values);
      let line = "max " + fmt(values[best]) + " at patch " + best;
      if (meta.signed) {
        let low = 0;
        for (let i = 1; i < values.length; i++) if (values[i] < values[low]) low = i;
        line += " · min " + fmt(values[low]);
      }
      extraValues(k, q).forEach(function (v, i) { if (i < 2) line += " · " + names[i] + " " + fmt(v); });
      view.numbers.textContent = line;
    });
    if (st.status) {
      const r = Math.floor(q / gw), c = q % gw;
      let line = fill((a.labels && a.labels.status) || "query patch {query} (row {row}, column {col})",
        { query: q, row: r, col: c });
      if (st.awaiting !== null) line += " · fetching patch " + st.awaiting + " from the server…";
      else if (previewing) line += " · previewing: click to pin";
      st.status.textContent = line;
    }
    root.dataset.query = String(q);
    probe.query = q;
    probe.head = st.head;
  }

  function drawCls() {
    const views = st.views.cls;
    if (!views.length) return;
    const a = st.args;
    const colour = (a.colour && a.colour.map) || "inferno";
    const shared = sharedRange("cls", null);
    const h = st.hoverCls;
    views.forEach(function (view) {
      const k = view.big ? st.head : view.k;
      const values = rowValues(k, CLS_ROW);
      paint(view, values, values ? range(values, colour, shared) : [0, 1], colour,
        [{ patch: h, colour: "#00ffff" }]);
      if (!values) { view.numbers.textContent = ""; return; }
      const best = argmax(values);
      let line = "max " + fmt(values[best]) + " at patch " + best;
      if (h !== null) line += " · patch " + h + ": " + fmt(values[h]);
      view.numbers.textContent = line;
    });
  }

  function drawAll() {
    if (!st.meta) return;
    drawQuery();
    drawCls();
    probe.draws += 1;
    reportHeight();
  }

  // ---------------------------------------------------------------- interaction
  function patchAt(view, e) {
    const rect = view.canvas.getBoundingClientRect();
    const [gh, gw] = st.meta.grid;
    const c = Math.floor(((e.clientX - rect.left) / rect.width) * gw);
    const r = Math.floor(((e.clientY - rect.top) / rect.height) * gh);
    if (r < 0 || c < 0 || r >= gh || c >= gw) return null;
    return r * gw + c;
  }

  function timed(e, draw) {
    const start = performance.now();
    draw();
    const drawn = performance.now();
    probe.draws += 1;
    const since = e && e.timeStamp ? e.timeStamp : start;
    requestAnimationFrame(function () {
      probe.hovers.push({ draw_ms: drawn - start, event_to_frame_ms: performance.now() - since });
      if (probe.hovers.length > 500) probe.hovers.shift();
    });
  }

  function onMove(view, e) {
    const p = patchAt(view, e);
    if (p === null) return;
    if (view.kind === "cls") {
      if (p !== st.hoverCls) { st.hoverCls = p; timed(e, drawCls); }
      return;
    }
    if (st.meta.fallback) {
      if (p !== st.outlineOnly) { st.outlineOnly = p; timed(e, drawQuery); }
      return;
    }
    if (p !== st.preview) { st.preview = p; timed(e, drawQuery); }
  }

  function onLeave(view) {
    if (view.kind === "cls") { st.hoverCls = null; drawCls(); return; }
    st.preview = null;
    st.outlineOnly = null;
    drawQuery();
  }

  function pin(p, head) {
    st.pinned = p;
    if (head !== null && head !== undefined) st.head = head;
    st.preview = null;
    if (st.meta.fallback) st.awaiting = st.rowOf.has(p) ? null : p;
    drawQuery();
    drawCls();
    scheduleReport();
  }

  function onClick(view, e) {
    const p = patchAt(view, e);
    if (p === null) return;
    if (view.kind === "cls") {
      if (!view.big) { st.head = view.k; drawQuery(); drawCls(); scheduleReport(); }
      return;
    }
    pin(p, view.big ? null : view.k);
  }

  root.addEventListener("keydown", function (e) {
    if (!st.meta || !st.views.query.length) return;
    const [gh, gw] = st.meta.grid;
    let r = Math.floor(st.pinned / gw), c = st.pinned % gw;
    if (e.key === "ArrowLeft") c = Math.max(0, c - 1);
    else if (e.key === "ArrowRight") c = Math.min(gw - 1, c + 1);
    else if (e.key === "ArrowUp") r = Math.max(0, r - 1);
    else if (e.key === "ArrowDown") r = Math.min(gh - 1, r + 1);
    else return;
    e.preventDefault();
    pin(r * gw + c, null);
  });

  // ---------------------------------------------------------------- render
  function onRender(a) {
    st.args = a;
    loadData(a);
    const meta = st.meta;
    const sel = a.selection || {};
    if (sel.nonce !== st.nonce) {
      st.nonce = sel.nonce;
      st.pinned = Math.max(0, Math.min(meta.grid[0] * meta.grid[1] - 1, sel.query | 0));
      st.head = Math.max(0, Math.min(meta.panels - 1, sel.head | 0));
      st.preview = null;
      st.lastReported = st.pinned + ":" + st.head;
    }
    if (meta.fallback) {
      const held = meta.rows.filter(function (q) { return q !== CLS_ROW; });
      if (st.awaiting !== null && held.indexOf(st.awaiting) >= 0) st.awaiting = null;
      if (st.awaiting === null && held.length && !st.rowOf.has(st.pinned)) st.pinned = held[0];
    } else {
      st.awaiting = null;
    }
    if (st.head >= meta.panels) st.head = 0;
    if (st.pinned >= meta.grid[0] * meta.grid[1]) st.pinned = 0; // a smaller grid than before (another model)
    layout();
    if (st.notice) st.notice.textContent = a.notice || "";
    drawAll();
    probe.ready = true;
  }

  function applyTheme(theme) {
    // the app's light or dark theme: text colour, font and the panel behind notices
    if (!theme) return;
    const css = document.documentElement.style;
    if (theme.textColor) css.setProperty("--text", theme.textColor);
    if (theme.font) css.setProperty("--font", theme.font);
    if (theme.secondaryBackgroundColor) css.setProperty("--notice", theme.secondaryBackgroundColor);
  }

  window.addEventListener("message", function (event) {
    const msg = event.data;
    if (!msg || msg.type !== "streamlit:render" || !msg.args || !msg.args.meta) return;
    applyTheme(msg.theme);
    onRender(msg.args);
  });

  let resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      if (!st.args) return;
      const width = Math.floor(root.clientWidth || window.innerWidth);
      if (Math.abs(width - st.width) > 2) { layout(); drawAll(); }
    }, 100);
  });
  new ResizeObserver(reportHeight).observe(root);

  send("streamlit:componentReady", { apiVersion: 1 });
})();
