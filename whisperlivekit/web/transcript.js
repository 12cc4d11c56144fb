/**
 * The transcript: committed `lines` (speaker badge, time range, text) rendered into a
 * list that only changes where the server's update changed, the tentative
 * `buffer_transcription` in grey after them, and the whole thing as plain text.
 * A line's words are spans; words Whisper was unsure of (probability below
 * LOW_PROBABILITY) are lighter. Text fields keep Whisper's leading spaces (as
 * WhisperLiveKit sends them), so words are joined as they come, never with an extra space.
 * Lines of earlier connections (after a reconnect) are kept above the current ones.
 */
export const SILENCE_SPEAKER = -2;
export const UNKNOWN_SPEAKER = 0;
export const LOW_PROBABILITY = 0.5;

export function speakerLabel(speaker) {
  if (speaker === SILENCE_SPEAKER) return "Silence";
  if (speaker === UNKNOWN_SPEAKER || speaker == null) return "Speaker ?";
  return `Speaker ${speaker}`;
}

/** "0:00:02.40" → "00:02.4"; hours are shown only when there are some. */
export function shortTime(time) {
  if (!time) return "";
  return time.replace(/^0:/, "").replace(/(\.\d)\d$/, "$1");
}

export function formatLag(seconds) {
  return typeof seconds === "number" ? `${seconds.toFixed(1)} s` : "–";
}

function lineKey(line) {
  return `${line.speaker}|${line.start}|${line.end}|${line.text ?? ""}`;
}

function renderLine(item, line) {
  const silence = line.speaker === SILENCE_SPEAKER;
  item.className = silence ? "line silence" : "line";
  item.dataset.testid = "line";
  item.dataset.speaker = String(line.speaker);
  item.dataset.key = lineKey(line);
  if (line.detected_language) item.dataset.language = line.detected_language;
  if (line.speaker > 0) item.style.setProperty("--speaker-hue", String((line.speaker * 137 + 200) % 360));
  const badge = document.createElement("span");
  badge.className = "badge speaker";
  badge.textContent = speakerLabel(line.speaker);
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = `${shortTime(line.start)} – ${shortTime(line.end)}`;
  if (silence) return item.replaceChildren(badge, time);
  const text = document.createElement("p");
  text.className = "text";
  if (Array.isArray(line.words) && line.words.length) text.replaceChildren(...line.words.map(wordSpan));
  else text.textContent = line.text || "";
  if (text.firstChild) text.firstChild.textContent = text.firstChild.textContent.trimStart();
  item.replaceChildren(badge, time, text);
}

function wordSpan(word) {
  const span = document.createElement("span");
  span.className = word.probability < LOW_PROBABILITY ? "word unsure" : "word";
  span.dataset.probability = String(word.probability);
  if (word.probability < LOW_PROBABILITY) span.title = `Unsure: probability ${Math.round(word.probability * 100)} %`;
  span.textContent = word.text;
  return span;
}

export class Transcript {
  constructor(listElement, bufferElement) {
    this.list = listElement;
    this.buffer = bufferElement;
    this.earlier = [];
    this.current = [];
    this.tentative = "";
    this.language = null; // the language the server detected, when it detected one
  }

  get lines() {
    return this.earlier.concat(this.current);
  }

  get isEmpty() {
    return this.lines.length === 0 && !this.tentative;
  }

  /** A server update: its `lines` replace the current connection's lines. */
  update(message) {
    this.current = message.lines.filter((line) => line.speaker === SILENCE_SPEAKER || (line.text || "").trim());
    this.tentative = (message.buffer_transcription || "").trim(); // shown apart from the lines
    const spoken = this.current.filter((line) => line.detected_language);
    if (spoken.length) this.language = spoken[spoken.length - 1].detected_language;
    this.render();
  }

  /** A new connection starts its lines from zero: keep what the old one committed. */
  newConnection() {
    this.earlier = this.lines;
    this.current = [];
    if (this.tentative) this.earlier.push({ speaker: UNKNOWN_SPEAKER, text: this.tentative, start: "", end: "" });
    this.tentative = "";
    this.render();
  }

  clear() {
    this.earlier = [];
    this.current = [];
    this.tentative = "";
    this.language = null;
    this.render();
  }

  render() {
    const lines = this.lines;
    const items = this.list.children;
    lines.forEach((line, index) => {
      let item = items[index];
      if (!item) {
        item = document.createElement("li");
        this.list.append(item);
      }
      if (item.dataset.key !== lineKey(line)) renderLine(item, line);
    });
    while (items.length > lines.length) this.list.lastElementChild.remove();
    this.buffer.textContent = this.tentative;
    this.buffer.hidden = !this.tentative;
  }

  /** "[00:00.0 – 00:02.4] Speaker 1: The birch canoe…" per line; silences left out. */
  toText() {
    const rows = this.lines
      .filter((line) => line.speaker !== SILENCE_SPEAKER)
      .map((line) => {
        const when = line.start ? `[${shortTime(line.start)} – ${shortTime(line.end)}] ` : "";
        return `${when}${speakerLabel(line.speaker)}: ${(line.text || "").trim()}`;
      });
    if (this.tentative) rows.push(this.tentative);
    return rows.join("\n") + (rows.length ? "\n" : "");
  }
}
