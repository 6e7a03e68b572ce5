// ppc timeline renderer: draws the spans that ppc/sim/html.py encodes, on one canvas.
// Rows: per group (a schedule, or a measured step) a caption row, then one row per rank;
// a rank row holds its compute ops and, in a thin band under them, its communication.
// Within a rank, ops are in program order, so start and end never decrease: a binary
// search finds the first op in view. Ops at least two pixels wide are boxes; narrower
// ones add their color, weighted by the share of the pixel they cover, to an image row
// (white where the rank idles), so a whole step of 262,144 ops looks like what ran.
"use strict";
(function () {
  const meta = JSON.parse(document.getElementById("ppc-meta").textContent);
  const text = atob(document.getElementById("ppc-data").textContent.trim());
  const buffer = new ArrayBuffer(text.length);
  const octets = new Uint8Array(buffer);
  for (let i = 0; i < text.length; i++) octets[i] = text.charCodeAt(i);
  const TYPES = { Float32Array, Uint8Array, Uint16Array, Uint32Array, Int16Array, Int32Array };
  const view = (e) => new TYPES[e.type](buffer, e.offset, e.length);
  const FIELDS = ["start", "end", "code", "stage", "mb", "peer", "bytesIndex"];
  function decode(d) {
    if (!d) return null;
    const out = { offsets: d.offsets, bytes: d.bytes || [] };
    for (const f of FIELDS) if (d[f]) out[f] = view(d[f]);
    out.count = d.offsets[d.offsets.length - 1];
    return out;
  }
  const DESCRIBE = {
    F: "forward", B: "backward", I: "backward for inputs", W: "backward for weights",
    SEND_F: "send activations", RECV_F: "receive activations", SEND_B: "send gradients",
    RECV_B: "receive gradients", REDUCE_TIED: "tied-weight reduction", STEP: "optimizer step",
  };
  const kinds = meta.kinds;

  function rgb(hex) { return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16)); }
  function shades(virtual) {  // [code][chunk] -> [css, [r, g, b]]: a rank's later stages lighter
    return meta.colors.map((hex) => {
      const c = rgb(hex);
      const out = [];
      for (let k = 0; k < Math.max(virtual, 1); k++) {
        const a = virtual > 1 ? 1 - 0.6 * k / (virtual - 1) : 1;
        const mixed = c.map((v) => Math.round(a * v + (1 - a) * 255));
        out.push(["rgb(" + mixed.join(",") + ")", mixed]);
      }
      return out;
    });
  }
  const groups = meta.groups.map((g) => {
    const comm = decode(g.comm);
    return {
      caption: g.caption, ranks: g.ranks, chunks: g.chunks, fills: shades(g.virtual),
      compute: decode(g.compute), comm: comm && comm.count > 0 ? comm : null,
    };
  });

  const legend = document.getElementById("legend");
  const used = new Set();
  for (const g of groups) for (const lane of [g.compute, g.comm]) if (lane) for (const c of lane.code) used.add(c);
  kinds.forEach((k, c) => {
    if (!used.has(c)) return;
    const item = document.createElement("span");
    item.innerHTML = '<i style="background:' + meta.colors[c] + '"></i>' + k + " " + DESCRIBE[k];
    legend.appendChild(item);
  });

  const canvas = document.getElementById("timeline");
  const ctx = canvas.getContext("2d");
  const tip = document.getElementById("tip");
  const LABEL = 76, AXIS = 26, CAPTION = 22, RIGHT = 10;
  let width = 0, rowH = 16, rows = [];
  let t0 = 0, t1 = meta.horizon;

  function layout() {
    const rankRows = groups.reduce((n, g) => n + g.ranks, 0);
    const room = window.innerHeight - document.querySelector("header").offsetHeight - AXIS - CAPTION * groups.length - 8;
    rowH = Math.max(8, Math.min(28, Math.floor(room / rankRows)));
    rows = [];
    let y = AXIS;
    for (const g of groups) {
      rows.push({ group: g, rank: -1, y, h: CAPTION });
      y += CAPTION;
      for (let r = 0; r < g.ranks; r++) { rows.push({ group: g, rank: r, y, h: rowH }); y += rowH; }
    }
    width = document.documentElement.clientWidth;
    const dpr = window.devicePixelRatio || 1;
    canvas.style.width = width + "px";
    canvas.style.height = y + 4 + "px";
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round((y + 4) * dpr);
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }

  const plotW = () => width - LABEL - RIGHT;
  const X = (t) => LABEL + (t - t0) / (t1 - t0) * plotW();
  const T = (x) => t0 + (x - LABEL) / plotW() * (t1 - t0);

  function bands(row) {  // [y, height] of the compute band and of the communication band
    const pad = rowH >= 12 ? 2 : 1;
    if (!row.group.comm) return [[row.y + pad, row.h - 2 * pad], null];
    const c = Math.max(2, Math.round(row.h * 0.22));
    return [[row.y + pad, row.h - 2 * pad - c - 1], [row.y + row.h - pad - c, c]];
  }

  function firstEnding(lane, lo, hi, t) {  // first index in [lo, hi) whose end >= t
    while (lo < hi) { const mid = (lo + hi) >> 1; if (lane.end[mid] < t) lo = mid + 1; else hi = mid; }
    return lo;
  }

  // Narrow ops of every band go to one image: band b is its row b, drawn stretched.
  const fine = document.createElement("canvas");
  const fineCtx = fine.getContext("2d");
  let ink = null, image = null;

  function drawLane(lane, rank, band, group, labels, row) {
    const lo = lane.offsets[rank], hi = lane.offsets[rank + 1];
    const [y, h] = band;
    const W = Math.ceil(plotW());
    ink.fill(0);
    let style = "", touched = false;
    for (let i = firstEnding(lane, lo, hi, t0); i < hi && lane.start[i] <= t1; i++) {
      const x0 = X(lane.start[i]), x1 = X(lane.end[i]);
      const [css, color] = group.fills[lane.code[i]][group.chunks[lane.stage[i]] || 0];
      if (x1 - x0 < 2) {  // add to the pixels it covers (at least a third of one)
        const a = x0 - LABEL, b = Math.max(x1 - LABEL, a + 0.34);
        for (let px = Math.max(0, Math.floor(a)); px < Math.min(W, Math.ceil(b)); px++) {
          const share = Math.min(b, px + 1) - Math.max(a, px);
          ink[4 * px] += share * color[0]; ink[4 * px + 1] += share * color[1];
          ink[4 * px + 2] += share * color[2]; ink[4 * px + 3] += share;
        }
        touched = true;
        continue;
      }
      if (css !== style) { ctx.fillStyle = css; style = css; }
      ctx.fillRect(x0, y, x1 - x0 >= 4 ? x1 - x0 - 1 : x1 - x0, h);
      if (labels && x1 - x0 >= 18) labels.push([(Math.max(x0, LABEL) + Math.min(x1, width - RIGHT)) / 2, y + h / 2, lane.mb[i]]);
    }
    if (!touched) return false;
    const base = row * image.width * 4;
    for (let px = 0; px < W; px++) {
      const share = ink[4 * px + 3];
      if (share <= 0) continue;
      for (let c = 0; c < 3; c++) image.data[base + 4 * px + c] = ink[4 * px + c] / share;
      image.data[base + 4 * px + 3] = Math.min(1, share) * 255;
    }
    return true;
  }

  function niceStep(span) {
    const raw = span / Math.max(2, plotW() / 110);
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
  }

  function draw() {
    const H = canvas.height / (window.devicePixelRatio || 1);
    ctx.clearRect(0, 0, width, H);
    ctx.font = "11px system-ui, sans-serif";
    const step = niceStep(t1 - t0);
    ctx.strokeStyle = "#eee";
    ctx.fillStyle = "#555";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      const x = Math.round(X(t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, AXIS - 6); ctx.lineTo(x, H); ctx.stroke();
      ctx.fillText(+t.toPrecision(6) + "", x, AXIS / 2 - 2);
    }
    ctx.textAlign = "left";
    ctx.fillText(meta.unit, 4, AXIS / 2 - 2);
    const labelEvery = rowH >= 11 ? 1 : Math.ceil(11 / rowH) * 2;
    for (const row of rows) {
      ctx.fillStyle = "#222";
      ctx.textAlign = "left";
      if (row.rank < 0) {
        ctx.font = "bold 12px system-ui, sans-serif";
        ctx.fillText(row.group.caption, 4, row.y + row.h / 2);
        ctx.font = "11px system-ui, sans-serif";
        continue;
      }
      if (row.rank % labelEvery === 0) ctx.fillText("rank " + row.rank, 4, row.y + row.h / 2);
    }
    ctx.save();
    ctx.beginPath(); ctx.rect(LABEL, AXIS, plotW(), H - AXIS); ctx.clip();
    const labels = rowH >= 12 ? [] : null;
    const W = Math.ceil(plotW());
    const laneBands = [];
    for (const row of rows) {
      if (row.rank < 0) continue;
      const [computeBand, commBand] = bands(row);
      laneBands.push([row.group.compute, row.rank, computeBand, row.group]);
      if (commBand) laneBands.push([row.group.comm, row.rank, commBand, row.group]);
    }
    if (!image || image.width !== W || image.height !== laneBands.length) {
      fine.width = W; fine.height = laneBands.length;
      image = fineCtx.createImageData(W, laneBands.length);
      ink = new Float32Array(4 * W);
    } else image.data.fill(0);
    const blended = laneBands.map(([lane, rank, band, group], i) =>
      drawLane(lane, rank, band, group, lane === group.compute ? labels : null, i));
    fineCtx.putImageData(image, 0, 0);
    ctx.imageSmoothingEnabled = false;
    laneBands.forEach(([, , band], i) => {
      if (blended[i]) ctx.drawImage(fine, 0, i, W, 1, LABEL, band[0], W, band[1]);
    });
    if (labels) {
      ctx.fillStyle = "#000";
      ctx.textAlign = "center";
      ctx.font = "10px system-ui, sans-serif";
      for (const [x, y, mb] of labels) ctx.fillText(mb + "", x, y);
    }
    ctx.restore();
  }

  let pending = false;
  function redraw() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  }

  function zoom(factor, at) {
    const span = Math.min(Math.max((t1 - t0) * factor, meta.horizon * 1e-7), meta.horizon * 1.2);
    const f = (at - t0) / (t1 - t0);
    t0 = at - f * span;
    t1 = t0 + span;
    redraw();
  }
  function pan(dt) { t0 += dt; t1 += dt; redraw(); }
  function reset() { t0 = 0; t1 = meta.horizon; redraw(); }

  function hit(x, y) {  // the op under the pointer, within 3 pixels
    const row = rows.find((r) => y >= r.y && y < r.y + r.h);
    if (!row || row.rank < 0 || x < LABEL) return null;
    const [, commBand] = bands(row);
    const comm = commBand && y >= commBand[0] - 1;
    const lane = comm ? row.group.comm : row.group.compute;
    const lo = lane.offsets[row.rank], hi = lane.offsets[row.rank + 1];
    const tol = 3 * (t1 - t0) / plotW(), t = T(x);
    let best = -1, gap = Infinity;
    for (let i = firstEnding(lane, lo, hi, t - tol); i < hi && lane.start[i] <= t + tol; i++) {
      const d = t < lane.start[i] ? lane.start[i] - t : t > lane.end[i] ? t - lane.end[i] : 0;
      if (d < gap) { gap = d; best = i; }
    }
    return best < 0 ? null : { row, lane, i: best, comm };
  }

  function describe(h) {
    const { lane, i, row } = h;
    const kind = kinds[lane.code[i]];
    const s = lane.start[i], e = lane.end[i];
    const n = (v) => +v.toPrecision(7);
    const lines = [
      lane.stage[i] + kind + lane.mb[i] + "  " + DESCRIBE[kind],
      "rank " + row.rank + "  stage " + lane.stage[i] + "  microbatch " + lane.mb[i],
      "start " + n(s) + "  end " + n(e) + "  (" + n(e - s) + " " + meta.unit + ")",
    ];
    if (h.comm) {
      if (lane.peer[i] >= 0) lines.push("peer rank " + lane.peer[i]);
      lines.push("bytes " + lane.bytes[lane.bytesIndex[i]].toLocaleString("en-US"));
    }
    return row.group.caption.split(":")[0] + "\n" + lines.join("\n");
  }

  let drag = null;
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    if (Math.abs(ev.deltaX) > Math.abs(ev.deltaY)) pan(ev.deltaX / plotW() * (t1 - t0));
    else zoom(Math.exp(ev.deltaY * 0.002), T(ev.offsetX));
  }, { passive: false });
  canvas.addEventListener("mousedown", (ev) => { drag = { x: ev.clientX, t0, t1 }; });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (ev) => {
    if (drag) {
      const dt = (drag.x - ev.clientX) / plotW() * (drag.t1 - drag.t0);
      t0 = drag.t0 + dt; t1 = drag.t1 + dt;
      tip.style.display = "none";
      redraw();
      return;
    }
    if (ev.target !== canvas) { tip.style.display = "none"; return; }
    const h = hit(ev.offsetX, ev.offsetY);
    if (!h) { tip.style.display = "none"; return; }
    tip.textContent = describe(h);
    tip.style.display = "block";
    const left = ev.clientX + 14 + tip.offsetWidth > window.innerWidth ? ev.clientX - tip.offsetWidth - 10 : ev.clientX + 14;
    tip.style.left = left + "px";
    tip.style.top = ev.clientY + 14 + "px";
  });
  canvas.addEventListener("dblclick", reset);
  window.addEventListener("keydown", (ev) => {
    const mid = (t0 + t1) / 2, span = t1 - t0;
    if (ev.key === "+" || ev.key === "=") zoom(0.7, mid);
    else if (ev.key === "-") zoom(1 / 0.7, mid);
    else if (ev.key === "ArrowLeft") pan(-0.2 * span);
    else if (ev.key === "ArrowRight") pan(0.2 * span);
    else if (ev.key === "0") reset();
  });
  window.addEventListener("resize", () => { layout(); redraw(); });
  layout();
  draw();
})();
