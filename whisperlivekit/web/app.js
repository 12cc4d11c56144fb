/**
 * The live transcription page: wires the microphone picker, the Record/Stop button,
 * the `/asr` session, the audio capture and the transcript together.
 * #status shows the state in words and as data-state: idle, connecting, queued,
 * recording, reconnecting, finishing, finished or error; its data-sessions counts the
 * connections the server accepted since Record, data-last-message names the last message type.
 */
import { AsrSession, backoffMs, defaultAsrUrl, explainClose, loadCloseCodes } from "./connection.js";
import { RecordingMeter } from "./meter.js";
import { closeMicrophone, listMicrophones, openMicrophone, startCapture } from "./recorder.js";
import { copyText, downloadText, transcriptFilename } from "./share.js";
import { Transcript, formatLag } from "./transcript.js";

const $ = (id) => document.getElementById(id);
const ui = {
  mic: $("mic"), url: $("ws-url"), record: $("record"), status: $("status"), error: $("error"),
  device: $("device"), audio: $("audio-mode"), language: $("language"), lagTranscription: $("lag-transcription"),
  lagDiarization: $("lag-diarization"), copy: $("copy"), download: $("download"), empty: $("empty"),
};
const transcript = new Transcript($("lines"), $("buffer"));
const meter = new RecordingMeter({ row: $("meter-row"), meter: $("level"), fill: $("level-fill"), elapsed: $("elapsed") });
const STREAMING = new Set(["connecting", "queued", "recording", "reconnecting"]);

let state = "idle";
let recording = false; // the user wants audio to flow: from Record until Stop or a refusal
let microphone = null;
let session = null;
let capture = null;
let attempt = 0; // reconnect attempts since the last config message
let retryTimer = null;
let closeCodes = null; // the server's close-code table (GET /close-codes.json), fetched once

/** When the server cannot even be asked, a close is a lost network: worth a retry. */
const UNREACHABLE = { codes: {}, default: { retry: true, message: "Connection lost{: reason} (code {code})." } };

async function closeCodeTable() {
  if (!closeCodes) closeCodes = await loadCloseCodes().catch(() => null);
  return closeCodes || UNREACHABLE;
}

function setState(next, text) {
  state = next;
  ui.status.dataset.state = next;
  ui.status.textContent = text;
  const streaming = STREAMING.has(next);
  ui.record.textContent = streaming ? "Stop" : "Record";
  ui.record.classList.toggle("recording", streaming);
  ui.record.disabled = next === "finishing";
  ui.mic.disabled = ui.url.disabled = streaming || next === "finishing";
}

function showError(text) {
  ui.error.textContent = text || "";
  ui.error.hidden = !text;
}

function resetFacts() {
  showDevice(null);
  for (const fact of [ui.audio, ui.language, ui.lagTranscription, ui.lagDiarization]) fact.textContent = "–";
}

function showDevice(config) {
  ui.device.replaceChildren(!config ? "–" : config.gpu_id == null ? config.device : `GPU ${config.gpu_id} (${config.device})`);
  if (config && config.simulated) {
    const badge = document.createElement("span");
    badge.className = "badge simulated";
    badge.textContent = "simulated";
    ui.device.append(" ", badge);
  }
  ui.device.title = config ? `connection ${config.connection_id}` : "";
}

function refreshTranscriptView() {
  ui.empty.hidden = !transcript.isEmpty;
  ui.copy.disabled = ui.download.disabled = transcript.isEmpty;
}

async function refreshMicrophones() {
  const chosen = ui.mic.value;
  const microphones = await listMicrophones().catch(() => []);
  const options = [new Option("Default microphone", "")];
  microphones.forEach((mic, index) => {
    if (mic.deviceId && mic.deviceId !== "default") options.push(new Option(mic.label || `Microphone ${index + 1}`, mic.deviceId));
  });
  ui.mic.replaceChildren(...options);
  ui.mic.value = options.some((option) => option.value === chosen) ? chosen : "";
}

async function stopCapture() {
  const current = capture;
  capture = null;
  meter.pause();
  if (current) await current.stop();
}

function release() {
  clearTimeout(retryTimer);
  retryTimer = null;
  stopCapture();
  meter.stop();
  closeMicrophone(microphone);
  microphone = null;
}

async function start() {
  showError("");
  transcript.clear();
  refreshTranscriptView();
  resetFacts();
  meter.reset();
  setState("connecting", "Opening the microphone…");
  const table = closeCodeTable(); // fetched while the microphone opens
  try {
    microphone = await openMicrophone(ui.mic.value);
  } catch (error) {
    setState("error", "No microphone");
    showError(`Could not open the microphone: ${error.message || error.name}`);
    return;
  }
  refreshMicrophones(); // labels are readable once permission is granted
  await table;
  recording = true;
  attempt = 0;
  ui.status.dataset.sessions = "0";
  connect();
}

function connect() {
  retryTimer = null;
  if (attempt > 0) transcript.newConnection();
  setState(attempt ? "reconnecting" : "connecting", attempt ? `Reconnecting (attempt ${attempt})…` : "Connecting to the server…");
  let me = null;
  const mine = (handler) => (...args) => session === me && handler(me, ...args);
  try {
    me = new AsrSession(ui.url.value.trim(), {
      onMessage: mine((_, message) => (ui.status.dataset.lastMessage = message.type || "update")),
      onConfig: mine(onConfig),
      onQueued: mine((_, position) => setState("queued", `Waiting for a free GPU: position ${position} in the queue…`)),
      onUpdate: mine(onUpdate),
      onError: mine((_, error) => showError(`Server error: ${error}`)),
      onReadyToStop: mine(() => setState("finished", "Finished: everything sent was transcribed.")),
      onClose: mine(onClose),
    });
  } catch (error) {
    recording = false;
    release();
    setState("error", "Bad server URL");
    showError(`Cannot connect to “${ui.url.value}”: ${error.message}`);
    return;
  }
  session = me;
}

async function onConfig(me, config) {
  attempt = 0;
  ui.status.dataset.sessions = String(Number(ui.status.dataset.sessions || 0) + 1);
  showDevice(config);
  try {
    const started = await startCapture(microphone, config.useAudioWorklet, (chunk) => me.send(chunk));
    if (session !== me || !recording) return void started.stop();
    capture = started;
    meter.start(started.level);
    ui.audio.textContent = started.kind;
    setState("recording", "Recording");
  } catch (error) {
    recording = false;
    release();
    me.close();
    setState("error", "Audio capture failed");
    showError(`Could not start audio capture: ${error.message}`);
  }
}

function onUpdate(me, message) {
  transcript.update(message);
  refreshTranscriptView();
  if (transcript.language) ui.language.textContent = `${transcript.language} (detected)`;
  ui.lagTranscription.textContent = formatLag(message.remaining_time_transcription);
  ui.lagDiarization.textContent = formatLag(message.remaining_time_diarization);
  if (state === "recording") setState("recording", message.status === "no_audio_detected" ? "Recording: no speech detected yet" : "Recording");
}

function onClose(me, code, reason) {
  if (state === "finished" || state === "idle") return;
  const { message, retry } = explainClose(code, reason, closeCodes || UNREACHABLE);
  const detail = me.lastError ? `Server error: ${me.lastError}. ${message}` : message;
  stopCapture();
  if (recording && retry) {
    attempt += 1;
    const delay = backoffMs(attempt);
    setState("reconnecting", `${detail} Reconnecting in ${Math.round(delay / 1000)} s…`);
    retryTimer = setTimeout(connect, delay);
    return;
  }
  const finishing = state === "finishing";
  recording = false;
  release();
  setState("error", finishing ? "Closed before the server finished" : retry ? "Disconnected" : "Refused by the server");
  showError(detail);
}

async function stop() {
  recording = false;
  meter.stop();
  const me = session;
  if (!me || !me.isOpen || !capture) { // nothing streamed yet: just hang up
    release();
    if (me) me.close();
    setState("idle", "Stopped");
    return;
  }
  setState("finishing", "Finishing: transcribing the last words…");
  await stopCapture(); // its last chunk goes out before the end frame
  closeMicrophone(microphone);
  microphone = null;
  me.end();
}

function flash(button, text) {
  const original = button.dataset.label || button.textContent;
  button.dataset.label = original;
  button.textContent = text;
  setTimeout(() => (button.textContent = original), 1500);
}

ui.record.addEventListener("click", () => (STREAMING.has(state) ? stop() : start()));
ui.copy.addEventListener("click", async () => flash(ui.copy, (await copyText(transcript.toText())) ? "Copied" : "Copy failed"));
ui.download.addEventListener("click", () => downloadText(transcript.toText(), transcriptFilename()));
window.addEventListener("pagehide", () => session && session.close());

ui.url.value = defaultAsrUrl();
refreshTranscriptView();
closeCodeTable();
if (navigator.mediaDevices) {
  refreshMicrophones();
  navigator.mediaDevices.addEventListener("devicechange", refreshMicrophones);
} else {
  ui.record.disabled = true;
  showError("This page cannot use the microphone here: open it over HTTPS or on localhost.");
}
