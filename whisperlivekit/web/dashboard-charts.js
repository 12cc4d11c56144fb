/**
 * The dashboard's history charts (uPlot, vendored in static/vendor/uplot/): the samples of
 * `/gpu-status/history` (every 2 s, last 15 min, kept by the server) as small line charts on
 * each device card, and one host-wide chart of connections vs capacity and refusals.
 *
 * `HistoryCharts.ingest(body)` appends the new samples; a changed `started_at` (the server
 * restarted) starts the curves again from empty. Each chart element carries what it shows
 * for screen readers (aria-label) and for scripts (data-points, data-first, data-peak, data-latest).
 */
const uPlot = window.uPlot;

/** Per-card charts: what each plots from a device's sample, its unit, and its y-range floor. */
const DEVICE_CHARTS = [
  { metric: "connections", label: "Connections", unit: "", stepped: true, value: (d) => d.connections,
    top: (d) => d.max_connections },
  { metric: "realtime_load", label: "Load", title: "Real-time load: compute seconds per wall second, per lane", unit: "×", digits: 2, value: (d) => d.realtime_load, top: () => 1 },
  { metric: "utilization", label: "Utilisation", unit: " %", gpuOnly: true, value: (d) => d.utilization_percent, top: () => 100 },
  { metric: "memory", label: "Memory", unit: " GB", digits: 1, gpuOnly: true, value: (d) => d.memory_used_gb,
    top: (d) => d.memory_total_gb },
  { metric: "commit_lag", label: "Commit lag p95", unit: " s", digits: 1, value: (d) => d.commit_lag_p95_s, top: () => 2 },
];

function css(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
}

/** A "#rrggbb" colour at `alpha` (canvas styles take no var() or color-mix()). */
function translucent(color, alpha) {
  const hex = /^#([0-9a-f]{6})$/i.exec(color);
  if (!hex) return color;
  const n = parseInt(hex[1], 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

function formatValue(value, chart) {
  if (value == null) return "–";
  return `${chart.digits ? value.toFixed(chart.digits) : Math.round(value)}${chart.unit || ""}`;
}

/** An axis label short enough for a small chart: 16, 3.7, 0.25. */
function axisNumber(value) {
  if (value == null) return "";
  const magnitude = Math.abs(value);
  return String(magnitude >= 10 || Number.isInteger(value) ? Math.round(value) : Number(value.toFixed(magnitude >= 1 ? 1 : 2)));
}

function durationText(seconds) {
  return seconds < 90 ? `${Math.max(0, Math.round(seconds))} s` : `${Math.round(seconds / 60)} min`;
}

/** One uPlot in a container that follows its width; `set(times, series)` redraws it. */
class Plot {
  constructor(container, { height, series, yRange, axes = false, legend = false }) {
    this.container = container;
    this.options = { height, series, yRange, axes, legend };
    this.data = [[], ...series.map(() => [])];
    this.plot = null;
    new ResizeObserver(() => this.resize()).observe(container);
  }

  build() {
    const { height, series, yRange, axes, legend } = this.options;
    const muted = css("--muted");
    const grid = { stroke: translucent(css("--border"), 0.9), width: 1 };
    const font = "11px system-ui, sans-serif";
    this.plot = new uPlot({
      width: Math.max(60, this.container.clientWidth), height,
      padding: axes ? [10, 8, 0, 0] : [7, 6, 7, 0],  // uPlot's automatic padding leaves a small chart no room
      legend: { show: legend, live: false },
      cursor: { y: false, drag: { x: false, y: false } },
      select: { show: false },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(yRange(), max || 0)] },
        n: { range: (u, min, max) => [0, Math.max(4, max || 0)] } },
      axes: [
        { show: axes, stroke: muted, font, grid, ticks: { show: false }, size: 24,
          values: (u, splits) => splits.map((t) => new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })) },
        { stroke: muted, font, grid, ticks: { show: false }, size: axes ? 40 : 34, splits: (u, i, min, max) => [min, max],
          values: (u, splits) => splits.map(axisNumber),
          ...(axes ? { label: "connections", labelFont: font, labelSize: 16, labelGap: 2 } : {}) },
        ...(series.some((s) => s.scale === "n") ? [{ scale: "n", side: 1, stroke: muted, font, grid: { show: false },
          ticks: { show: false }, size: 30, splits: (u, i, min, max) => [min, max], values: (u, splits) => splits.map(axisNumber),
          label: "refused per 2 s", labelFont: font, labelSize: 16, labelGap: 2 }] : []),
      ],
      series: [{}, ...series.map((s) => ({ ...s, stroke: s.stroke(), fill: s.fill ? s.fill() : undefined,
        paths: s.stepped ? uPlot.paths.stepped({ align: 1 }) : s.bars ? uPlot.paths.bars({ size: [0.6, 8] }) : undefined,
        points: { show: false } }))],
    }, this.data, this.container);
  }

  resize() {
    if (!this.container.isConnected || !this.container.clientWidth) return;
    if (!this.plot) return this.build();
    if (Math.abs(this.plot.width - this.container.clientWidth) > 1) this.plot.setSize({ width: this.container.clientWidth, height: this.options.height });
  }

  set(times, series) {
    this.data = [times, ...series];
    if (!this.plot) this.resize();
    if (this.plot) this.plot.setData(this.data);
  }

  rebuild() {  // after the colour scheme changes: colours are read when a plot is built
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.resize();
  }
}

/** Labels a chart element with its series' story: points, first, peak and latest value. */
function describe(element, label, values, chart, spanS) {
  const present = values.filter((v) => v != null);
  const latest = present.length ? present[present.length - 1] : null;
  const peak = present.length ? Math.max(...present) : null;
  element.dataset.points = String(present.length);
  element.dataset.first = present.length ? String(present[0]) : "";
  element.dataset.peak = peak == null ? "" : String(peak);
  element.dataset.latest = latest == null ? "" : String(latest);
  element.setAttribute("aria-label", present.length
    ? `${label} over the last ${durationText(spanS)}: now ${formatValue(latest, chart)}, peak ${formatValue(peak, chart)}`
    : `${label}: no samples yet`);
  return latest;
}

export class HistoryCharts {
  constructor(hostContainer) {
    this.startedAt = null;
    this.windowS = 900;
    this.samples = [];
    this.cards = new Map(); // device key → { element, plots: [{chart, plot, box, value}] }
    this.host = this.buildHost(hostContainer);
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => this.allPlots().forEach((p) => p.rebuild()));
  }

  /** The `since` for the next request: the newest sample's time. */
  get lastT() {
    return this.samples.length ? this.samples[this.samples.length - 1].t : 0;
  }

  ingest(body) {
    if (body.started_at !== this.startedAt) {  // first answer, or a restarted server: start again
      this.startedAt = body.started_at;
      this.samples = [];
    }
    this.windowS = body.window_s || this.windowS;
    const last = this.lastT;
    this.samples.push(...(body.samples || []).filter((s) => s.t > last));
    const oldest = this.lastT - this.windowS;
    while (this.samples.length && this.samples[0].t < oldest) this.samples.shift();
    this.draw();
  }

  allPlots() {
    return [this.host.plot, ...[...this.cards.values()].flatMap((card) => card.plots.map((p) => p.plot))];
  }

  buildHost(container) {
    const box = document.createElement("div");
    box.className = "chart chart-host";
    box.dataset.testid = "host-chart";
    box.setAttribute("role", "img");
    container.append(box);
    const plot = new Plot(box, {
      height: 170, axes: true, legend: true, yRange: () => 1,
      series: [
        { label: "Connections", stroke: () => css("--accent"), fill: () => translucent(css("--accent"), 0.14), width: 2, stepped: true },
        { label: "Capacity", stroke: () => css("--muted"), width: 1.5, dash: [6, 4], stepped: true },
        { label: "Refused", scale: "n", stroke: () => css("--danger"), fill: () => translucent(css("--danger"), 0.5), width: 1, bars: true },
      ],
    });
    return { box, plot };
  }

  /** The chart section of a device card (`key` "0", "1" … or "cpu"), created once and kept across polls. */
  cardCharts(key) {
    if (this.cards.has(key)) return this.cards.get(key).element;
    const element = document.createElement("div");
    element.className = "card-charts";
    const title = document.createElement("p");
    title.className = "card-charts-title";
    element.append(title);
    const plots = DEVICE_CHARTS.filter((chart) => !(chart.gpuOnly && key === "cpu")).map((chart) => {
      const wrap = document.createElement("div");
      wrap.className = "spark";
      const head = document.createElement("div");
      head.className = "metric-head";
      const name = document.createElement("span");
      name.textContent = chart.label;
      if (chart.title) name.title = chart.title;
      const value = document.createElement("span");
      value.className = "metric-value";
      head.append(name, value);
      const box = document.createElement("div");
      box.className = "chart";
      box.dataset.testid = "chart";
      box.dataset.metric = chart.metric;
      box.setAttribute("role", "img");
      wrap.append(head, box);
      element.append(wrap);
      let top = 0;
      const plot = new Plot(box, {
        height: 46, yRange: () => top,
        series: [{ label: chart.label, stroke: () => css("--accent"), fill: () => translucent(css("--accent"), 0.14),
          width: 1.5, stepped: chart.stepped }],
      });
      return { chart, plot, box, value, setTop: (t) => (top = t || 0) };
    });
    this.cards.set(key, { element, plots, title });
    this.drawCard(key);
    return element;
  }

  draw() {
    const times = this.samples.map((s) => s.t);
    const spanS = times.length ? times[times.length - 1] - times[0] : 0;
    const connections = this.samples.map((s) => s.connections);
    this.host.plot.set(times, [connections, this.samples.map((s) => s.capacity), this.samples.map((s) => s.refused || null)]);
    describe(this.host.box, "Connections", connections, { unit: "" }, spanS);
    for (const key of this.cards.keys()) this.drawCard(key);
  }

  drawCard(key) {
    const { plots, title } = this.cards.get(key);
    const times = this.samples.map((s) => s.t);
    const spanS = times.length ? times[times.length - 1] - times[0] : 0;
    title.textContent = times.length ? `Last ${durationText(spanS)}` : "History: no samples yet";
    const devices = this.samples.map((s) => (s.devices || {})[key] || null);
    for (const { chart, plot, box, value, setTop } of plots) {
      const values = devices.map((d) => (d ? chart.value(d) ?? null : null));
      const latestDevice = devices.filter(Boolean).pop();
      setTop(latestDevice ? chart.top(latestDevice) : 0);
      plot.set(times, [values]);
      value.textContent = formatValue(describe(box, chart.label, values, chart, spanS), chart);
    }
  }
}
