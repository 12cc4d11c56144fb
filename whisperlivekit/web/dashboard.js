/**
 * The GPU dashboard: polls `/gpu-status` every 2 s and draws the totals and one card
 * per GPU (health, connections used / capacity, NVML memory, utilisation, temperature),
 * plus a CPU card when CPU slots are in use or there is no GPU. Each card keeps its
 * history charts, fed by `/gpu-status/history` (dashboard-charts.js) on the same poll.
 */
import { HistoryCharts } from "./dashboard-charts.js";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
const charts = new HistoryCharts($("host-history"));
const cardNodes = new Map(); // device key → its <article>, kept across polls so its charts live on

/** A DOM element: el("div", {class: "x", "data-testid": "y"}, child, "text", ...). */
function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

const number = (value, digits = 1) => (typeof value === "number" ? value.toFixed(digits) : "–");

/** A labelled bar: text such as "2 / 4", and a fill of `percent` (warns from 75 %, full at 100 %). */
function bar(label, text, percent, testid) {
  const clamped = Math.max(0, Math.min(100, Number.isFinite(percent) ? percent : 0));
  const level = clamped >= 100 ? "full" : clamped >= 75 ? "high" : "ok";
  const fill = el("div", { class: `bar-fill ${level}`, style: `width: ${clamped}%` });
  return el("div", { class: "metric" },
    el("div", { class: "metric-head" }, el("span", {}, label), el("span", { class: "metric-value", "data-testid": testid }, text)),
    el("div", { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": "0", "aria-valuemax": "100",
      "aria-valuenow": String(Math.round(clamped)), "aria-valuetext": text }, fill));
}

function fact(label, value, testid) {
  return el("div", { class: "fact" }, el("dt", {}, label), el("dd", { "data-testid": testid }, value));
}

function connectionsBar(active, max) {
  return bar("Connections", `${active} / ${max}`, max ? (100 * active) / max : 0, "connections");
}

/** The card of device `key`, its live part replaced by `children`, its history charts kept. */
function card(key, attributes, ...children) {
  let node = cardNodes.get(key);
  if (!node) {
    node = el("article", {});
    node.live = el("div", { class: "card-live" });
    node.append(node.live, charts.cardCharts(key));
    cardNodes.set(key, node);
  }
  for (const name of [...node.getAttributeNames()]) node.removeAttribute(name);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  node.live.replaceChildren(...children.filter(Boolean));
  return node;
}

function gpuCard(gpu) {
  const health = gpu.healthy ? el("span", { class: "badge ok" }, "healthy")
    : el("span", { class: "badge bad", title: gpu.unhealthy_reason || "" }, "unhealthy");
  const memoryText = gpu.total_memory_gb ? `${number(gpu.used_memory_gb)} / ${number(gpu.total_memory_gb)} GB` : "unknown";
  return card(String(gpu.gpu_id), { class: `card${gpu.healthy ? "" : " unhealthy"}`, "data-testid": "gpu-card", "data-gpu-id": String(gpu.gpu_id) },
    el("header", { class: "card-head" },
      el("h2", {}, `GPU ${gpu.gpu_id}`),
      el("div", { class: "badges" }, health, gpu.simulated ? el("span", { class: "badge simulated" }, "simulated") : null)),
    el("p", { class: "card-name", "data-testid": "gpu-name" }, gpu.name),
    connectionsBar(gpu.active_connections, gpu.max_connections),
    bar("Memory (NVML)", memoryText, gpu.memory_used_percent, "memory"),
    el("dl", { class: "card-facts" },
      fact("Utilisation", gpu.utilization_percent == null ? "–" : `${Math.round(gpu.utilization_percent)} %`, "utilization"),
      fact("Temperature", gpu.temperature_c == null ? "–" : `${Math.round(gpu.temperature_c)} °C`, "temperature")),
    gpu.healthy ? null : el("p", { class: "card-reason" }, gpu.unhealthy_reason || "not responding"));
}

function cpuCard(cpu, status) {
  const worker = (status.devices || {}).cpu;
  return card("cpu", { class: "card cpu", "data-testid": "cpu-card" },
    el("header", { class: "card-head" }, el("h2", {}, "CPU"),
      status.total_gpus ? el("div", { class: "badges" }, el("span", { class: "badge" }, "fallback")) : null),
    el("p", { class: "card-name" }, status.total_gpus ? "Connections beyond the GPUs' capacity" : "No GPU: engines run on the CPU"),
    connectionsBar(cpu.active_connections, cpu.max_connections),
    worker ? el("dl", { class: "card-facts" },
      fact("Real-time load", `${number(worker.realtime_load, 2)}×`, "realtime-load"),
      fact("Queue", String(worker.queue_depth), "queue-depth")) : null);
}

function render(status) {
  const cpu = status.cpu || { active_connections: 0, max_connections: 0 };
  const gpus = status.gpus || [];
  const gpuSlots = gpus.reduce((sum, gpu) => sum + (gpu.healthy ? gpu.max_connections : 0), 0);
  const cpuSlots = gpus.length === 0 || cpu.fallback !== false ? cpu.max_connections : 0;
  $("total-gpus").textContent = String(status.total_gpus);
  $("healthy-gpus").textContent = String(status.healthy_gpus);
  $("total-connections").textContent = String(status.total_connections);
  $("capacity").textContent = gpus.length ? `of ${gpuSlots} GPU slots` + (cpuSlots ? ` + ${cpuSlots} CPU` : "") : `of ${cpuSlots} CPU slots`;
  $("queued").textContent = String(status.queued ?? 0);
  const cards = gpus.map(gpuCard);
  if (cpu.active_connections > 0 || gpus.length === 0) cards.push(cpuCard(cpu, status));
  $("cards").replaceChildren(...cards);
}

/** GET a JSON status path, passing the page's `?token=` on (under --protect-status). */
async function getJson(path, query = {}) {
  const token = new URLSearchParams(location.search).get("token");
  const params = new URLSearchParams({ ...query, ...(token ? { token } : {}) });
  const response = await fetch(params.toString() ? `${path}?${params}` : path, { cache: "no-store" });
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

async function poll() {
  try {
    const [status, history] = await Promise.all([getJson("gpu-status"), getJson("gpu-status/history", { since: charts.lastT })]);
    render(status);
    charts.ingest(history);
    $("error").hidden = true;
    $("updated").textContent = `Updated ${new Date().toLocaleTimeString()} · refreshes every ${POLL_MS / 1000} s`;
  } catch (error) {
    $("error").textContent = `Cannot read /gpu-status: ${error.message}. Retrying…`;
    $("error").hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
