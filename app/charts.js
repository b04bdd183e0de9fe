// Line charts with labelled axes, drawn as SVG (no library): one chart per metric, one or more
// series, the x axis is the training step.

const SVG = "http://www.w3.org/2000/svg";
const W = 320;
const H = 180;
const PAD = { left: 46, right: 10, top: 10, bottom: 34 };

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text != null) node.textContent = text;
  return node;
}

/** About `count` round tick values covering [lo, hi]. */
function ticks(lo, hi, count = 4) {
  const span = hi - lo || Math.abs(hi) || 1;
  const raw = span / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function label(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e4 || a < 1e-3) return v.toExponential(0);
  return String(Number(v.toPrecision(3)));
}

export class LineChart {
  /**
   * @param {Element} container where the <figure> goes
   * @param {{title: string, yLabel: string, series: {key: string, name: string, color: string}[],
   *          yMin?: number, yMax?: number}} spec
   */
  constructor(container, spec) {
    this.spec = spec;
    this.points = spec.series.map(() => []);
    const figure = document.createElement("figure");
    figure.className = "chart";
    const caption = document.createElement("figcaption");
    caption.textContent = spec.title;
    if (spec.series.length > 1) {
      for (const s of spec.series) {
        const key = document.createElement("span");
        key.className = "legend";
        key.style.setProperty("--c", s.color);
        key.textContent = s.name;
        caption.append(" ", key);
      }
    }
    this.svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${spec.title} per step` });
    figure.append(caption, this.svg);
    container.append(figure);
    this.draw();
  }

  /** Adds one step's values (`values[key]`, non-finite ones skipped). */
  add(step, values) {
    this.spec.series.forEach((s, i) => {
      const v = values[s.key];
      if (Number.isFinite(v)) this.points[i].push([step, v]);
    });
    this.draw();
  }

  clear() {
    this.points = this.spec.series.map(() => []);
    this.draw();
  }

  /** How many points the chart holds (for tests: the chart moved). */
  get size() {
    return this.points.reduce((n, p) => n + p.length, 0);
  }

  draw() {
    const svg = this.svg;
    svg.textContent = "";
    const all = this.points.flat();
    const xs = all.map((p) => p[0]);
    const ys = all.map((p) => p[1]);
    let x0 = xs.length ? Math.min(...xs) : 0;
    let x1 = xs.length ? Math.max(...xs) : 10;
    if (x1 === x0) x1 = x0 + 1;
    let y0 = Math.min(this.spec.yMin ?? Infinity, ...ys);
    let y1 = Math.max(this.spec.yMax ?? -Infinity, ...ys);
    if (!Number.isFinite(y0) || !Number.isFinite(y1)) [y0, y1] = [0, 1];
    if (y1 === y0) [y0, y1] = [y0 - 0.5, y1 + 0.5];
    const pad = (y1 - y0) * 0.05;
    if (this.spec.yMin == null) y0 -= pad;
    if (this.spec.yMax == null) y1 += pad;
    const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
    const py = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);

    const axes = el("g", { class: "axes" });
    for (const t of ticks(y0, y1)) {
      axes.append(el("line", { x1: PAD.left, x2: W - PAD.right, y1: py(t), y2: py(t), class: "grid" }));
      axes.append(el("text", { x: PAD.left - 4, y: py(t) + 3, "text-anchor": "end" }, label(t)));
    }
    for (const t of ticks(x0, x1, 5).filter((t) => Number.isInteger(t))) {
      axes.append(el("line", { x1: px(t), x2: px(t), y1: H - PAD.bottom, y2: H - PAD.bottom + 3 }));
      axes.append(el("text", { x: px(t), y: H - PAD.bottom + 13, "text-anchor": "middle" }, label(t)));
    }
    axes.append(el("line", { x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
    axes.append(el("line", { x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
    axes.append(el("text", { x: (PAD.left + W - PAD.right) / 2, y: H - 4, "text-anchor": "middle", class: "axis-label" }, "step"));
    axes.append(
      el("text", { x: 10, y: (PAD.top + H - PAD.bottom) / 2, "text-anchor": "middle", class: "axis-label",
        transform: `rotate(-90 10 ${(PAD.top + H - PAD.bottom) / 2})` }, this.spec.yLabel),
    );
    svg.append(axes);
    this.spec.series.forEach((s, i) => {
      const pts = this.points[i];
      if (pts.length === 0) return;
      const d = pts.map(([x, y]) => `${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
      svg.append(el("polyline", { points: d, fill: "none", stroke: s.color, "stroke-width": 1.8 }));
      if (pts.length === 1) svg.append(el("circle", { cx: px(pts[0][0]), cy: py(pts[0][1]), r: 2.5, fill: s.color }));
    });
  }
}
