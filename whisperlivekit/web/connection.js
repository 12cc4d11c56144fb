/**
 * One WebSocket session with the server's `/asr` endpoint (docs: PROTOCOL.md):
 * dispatches the `config`, `queued`, update (full, or `snapshot`/`diff` rebuilt into full), `error`
 * and `ready_to_stop` messages,
 * and says in words what a close code means and whether reconnecting could help.
 */

/**
 * ws:// or wss:// (following the page), same host, path `asr`, `mode=diff` (a snapshot, then only
 * what changed); keeps a `?token=` from the page URL.
 */
export function defaultAsrUrl(page = window.location) {
  const url = new URL("asr", page.href);
  url.protocol = page.protocol === "https:" ? "wss:" : "ws:";
  url.searchParams.set("mode", "diff");
  const token = new URLSearchParams(page.search).get("token");
  if (token) url.searchParams.set("token", token);
  return url.href;
}

/**
 * `?mode=diff`: the full update that a `snapshot` or `diff` message stands for, given the lines the
 * client held before it. A diff drops `lines_pruned` lines from the front, keeps the first
 * `n_lines - new_lines.length` of the rest (a line that changed in place comes again), appends `new_lines`.
 */
export function applyDiff(held, message) {
  const { type, seq, n_lines: count, lines_pruned: pruned = 0, new_lines: added = [], ...update } = message;
  if (type === "snapshot") return update;
  const kept = held.slice(pruned, pruned + Math.max(0, count - added.length));
  return { ...update, lines: kept.concat(added) };
}

/** Delay before reconnect attempt `n` (1, 2, ...): 1 s, 2 s, 4 s ... capped at 30 s. */
export function backoffMs(attempt) {
  return Math.min(30000, 1000 * 2 ** Math.max(0, attempt - 1));
}

/** The server's close-code table (`GET /close-codes.json`, built from `api/errors.py`). */
export async function loadCloseCodes(url = new URL("../close-codes.json", import.meta.url)) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`close codes: HTTP ${response.status}`);
  return response.json();
}

/** { message, retry }: what to tell the user about a close, and whether to reconnect, as `table` says. */
export function explainClose(code, reason, table) {
  const entry = table.codes[String(code)] || table.default;
  const said = reason || entry.default_reason || "";
  let message = entry.message
    .replace("{: reason}", said ? `: ${said}` : "")
    .replace("{reason}", said)
    .replace("{code}", String(code));
  const hint = Object.entries(entry.hints || {}).find(([known]) => known.toLowerCase() === said.toLowerCase());
  if (hint) message += ` ${hint[1]}`;
  return { message, retry: entry.retry };
}

export class AsrSession {
  /** handlers: onMessage, onConfig, onQueued, onUpdate, onError, onReadyToStop, onClose(code, reason) */
  constructor(url, handlers) {
    this.handlers = handlers;
    this.lastError = null;
    this.ended = false;
    this.lines = []; // in diff mode: the lines as rebuilt so far
    this.ws = new WebSocket(url);
    this.ws.binaryType = "arraybuffer";
    this.ws.addEventListener("message", (event) => this.dispatch(event.data));
    this.ws.addEventListener("close", (event) => this.call("onClose", event.code, event.reason));
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  call(name, ...args) {
    if (this.handlers[name]) this.handlers[name](...args);
  }

  dispatch(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // the server only sends JSON text
    }
    this.call("onMessage", message);
    if (message.type === "config") this.call("onConfig", message);
    else if (message.type === "queued") this.call("onQueued", message.position);
    else if (message.type === "ready_to_stop") this.call("onReadyToStop");
    else if (message.type === "error" || message.status === "error") {
      this.lastError = message.error || "unknown error";
      this.call("onError", this.lastError); // its empty `lines` must not wipe the transcript
    } else if (message.type === "snapshot" || message.type === "diff") {
      const update = applyDiff(this.lines, message);
      this.lines = update.lines;
      this.call("onUpdate", update);
    } else if (Array.isArray(message.lines)) this.call("onUpdate", message);
  }

  /** A binary audio frame (Blob or ArrayBuffer); dropped if the socket is not open or audio has ended. */
  send(chunk) {
    if (this.isOpen && !this.ended) this.ws.send(chunk);
  }

  /** End of audio: an empty binary frame. The server answers with `ready_to_stop`. */
  end() {
    if (this.isOpen && !this.ended) this.ws.send(new ArrayBuffer(0));
    this.ended = true;
  }

  close() {
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
  }
}
