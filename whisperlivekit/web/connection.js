/**
 * One WebSocket session with the server's `/asr` endpoint (docs: PROTOCOL.md):
 * dispatches the `config`, `queued`, update, `error` and `ready_to_stop` messages,
 * and says in words what a close code means and whether reconnecting could help.
 */

/** ws:// or wss:// (following the page), same host, path `asr`; keeps a `?token=` from the page URL. */
export function defaultAsrUrl(page = window.location) {
  const url = new URL("asr", page.href);
  url.protocol = page.protocol === "https:" ? "wss:" : "ws:";
  const token = new URLSearchParams(page.search).get("token");
  if (token) url.searchParams.set("token", token);
  return url.href;
}

/** Delay before reconnect attempt `n` (1, 2, ...): 1 s, 2 s, 4 s ... capped at 30 s. */
export function backoffMs(attempt) {
  return Math.min(30000, 1000 * 2 ** Math.max(0, attempt - 1));
}

/** { message, retry }: what to tell the user about a close, and whether to reconnect. */
export function explainClose(code, reason) {
  switch (code) {
    case 1000:
      return { message: "Connection closed by the server.", retry: false };
    case 1008:
      if (!reason || /no gpu available/i.test(reason)) {
        return { message: "The server refused the connection: No GPU available. All transcription slots are busy; try again in a moment.", retry: false };
      }
      return { message: `The server refused the connection: ${reason}.`, retry: false };
    case 4401:
      return { message: "Access denied: the server needs a valid token (open this page with ?token=…).", retry: false };
    case 4400:
      return { message: `The server rejected the connection parameters${reason ? `: ${reason}` : ""}.`, retry: false };
    case 1003:
    case 1007:
    case 1009:
      return { message: `The server could not use the audio${reason ? `: ${reason}` : ""}.`, retry: false };
    case 1011:
      return { message: `Server error${reason ? `: ${reason}` : ""}.`, retry: true };
    default:
      return { message: `Connection lost${reason ? `: ${reason}` : ""} (code ${code}).`, retry: true };
  }
}

export class AsrSession {
  /** handlers: onMessage, onConfig, onQueued, onUpdate, onError, onReadyToStop, onClose(code, reason) */
  constructor(url, handlers) {
    this.handlers = handlers;
    this.lastError = null;
    this.ended = false;
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
