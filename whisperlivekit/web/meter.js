/**
 * The live page's sign of life while recording: an input level meter and the elapsed time.
 * `start(readLevel)` begins (or, after a reconnect, resumes) following a capture's `level()`;
 * `pause()` rests the meter while no capture runs; `stop()` ends the recording's clock. The
 * meter rises at once and falls back slowly, like a VU meter, so short syllables stay visible.
 */
const FALL_PER_S = 1.5; // full scale to silence in ~0.7 s

export function formatElapsed(seconds) {
  const whole = Math.max(0, Math.floor(seconds));
  const h = Math.floor(whole / 3600), m = Math.floor((whole % 3600) / 60), s = whole % 60;
  return `${h ? `${h}:${String(m).padStart(2, "0")}` : m}:${String(s).padStart(2, "0")}`;
}

export class RecordingMeter {
  constructor({ row, meter, fill, elapsed }) {
    Object.assign(this, { row, meter, fill, elapsed });
    this.readLevel = null;
    this.startedAt = null;
    this.shown = 0;
    this.frame = null;
    this.lastFrameAt = 0;
  }

  start(readLevel) {
    this.readLevel = readLevel || (() => 0);
    if (this.startedAt === null) this.startedAt = performance.now();
    this.row.hidden = false;
    this.tick();
  }

  pause() {
    this.readLevel = null;
  }

  stop() {
    this.readLevel = null;
    this.startedAt = null;
    cancelAnimationFrame(this.frame);
    this.frame = null;
    this.show(0);
  }

  reset() {
    this.stop();
    this.row.hidden = true;
    this.elapsed.textContent = formatElapsed(0);
  }

  tick() {
    cancelAnimationFrame(this.frame);
    const now = performance.now();
    const dt = this.lastFrameAt ? Math.min(0.25, (now - this.lastFrameAt) / 1000) : 0;
    this.lastFrameAt = now;
    const level = this.readLevel ? this.readLevel() : 0;
    this.show(Math.max(level, this.shown - FALL_PER_S * dt));
    this.elapsed.textContent = formatElapsed((now - this.startedAt) / 1000);
    this.frame = requestAnimationFrame(() => this.tick());
  }

  show(level) {
    this.shown = level;
    const percent = Math.round(level * 100);
    this.fill.style.width = `${(level * 100).toFixed(1)}%`;
    this.meter.setAttribute("aria-valuenow", String(percent));
  }
}
