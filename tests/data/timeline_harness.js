// Runs the renderer of a `ppc simulate --out x.html` page in node, against a stub DOM
// and canvas, and prints what it did as JSON: usage `node timeline_harness.js PAGE.html
// [x,y ...]` (one hover per point, in canvas pixels). Used by tests/test_sim_pictures_html.py.
"use strict";
const fs = require("fs");
const html = fs.readFileSync(process.argv[2], "utf8");
const scripts = [...html.matchAll(/<script([^>]*)>([\s\S]*?)<\/script>/g)];
const byId = {};
for (const [, attrs, body] of scripts) {
  const id = /id="([^"]+)"/.exec(attrs);
  if (id) byId[id[1]] = body;
}
const program = scripts.find(([, attrs]) => !/id=/.test(attrs))[2];

const stats = { fillRect: 0, drawImage: 0, texts: [] };
const handlers = {};
const listen = (name, fn) => { (handlers[name] = handlers[name] || []).push(fn); };
const ctx = new Proxy({
  fillRect() { stats.fillRect++; },
  fillText(text) { stats.texts.push(String(text)); },
  drawImage() { stats.drawImage++; },
  createImageData: (w, h) => ({ width: w, height: h, data: new Uint8ClampedArray(w * h * 4) }),
  putImageData(image) { stats.image = image; },
}, { get: (target, key) => (key in target ? target[key] : () => {}), set: () => true });
const canvas = { style: {}, width: 0, height: 0, getContext: () => ctx, addEventListener: listen };
const tip = { style: {}, textContent: "", offsetWidth: 200 };
const elements = {
  "ppc-meta": { textContent: byId["ppc-meta"] },
  "ppc-data": { textContent: byId["ppc-data"] },
  legend: { children: [], appendChild(c) { this.children.push(c); } },
  timeline: canvas,
  tip,
};
global.document = {
  getElementById: (id) => elements[id],
  querySelector: () => ({ offsetHeight: 60 }),
  createElement: (tag) => (tag === "canvas" ? { getContext: () => ctx } : {}),
  documentElement: { clientWidth: 1600 },
};
global.window = { innerHeight: 900, innerWidth: 1600, devicePixelRatio: 1, addEventListener: listen };
global.requestAnimationFrame = (fn) => fn();

let t = process.hrtime.bigint();
new Function(program)();
stats.loadMs = Number(process.hrtime.bigint() - t) / 1e6;
stats.legend = elements.legend.children.map((c) => c.innerHTML.replace(/<[^>]+>/g, ""));
stats.canvas = [canvas.width, canvas.height];
stats.hovers = [];
for (const point of process.argv.slice(3)) {
  const [x, y] = point.split(",").map(Number);
  tip.textContent = "";
  for (const fn of handlers.mousemove) fn({ target: canvas, offsetX: x, offsetY: y, clientX: x, clientY: y });
  stats.hovers.push(tip.style.display === "block" ? tip.textContent : null);
}
// zoom in 4x at the middle with the wheel, then time a redraw of the whole step
const before = stats.fillRect;
for (const fn of handlers.wheel) fn({ preventDefault() {}, deltaX: 0, deltaY: -700, offsetX: 800 });
stats.zoomRects = stats.fillRect - before;
t = process.hrtime.bigint();
for (const fn of handlers.dblclick) fn({});
stats.redrawMs = Number(process.hrtime.bigint() - t) / 1e6;
const image = stats.image;  // the blended narrow ops: how many pixels each band row covers
stats.image = { width: image.width, height: image.height, covered: [] };
for (let row = 0; row < image.height; row++) {
  let n = 0;
  for (let px = 0; px < image.width; px++) if (image.data[4 * (row * image.width + px) + 3] > 0) n++;
  stats.image.covered.push(n);
}
stats.texts = stats.texts.filter((s) => s.startsWith("rank ") || s.includes(":"));
process.stdout.write(JSON.stringify(stats));
