/**
 * Microphone capture. `openMicrophone` opens the chosen input; `startCapture` streams
 * it to a callback either as WebM/Opus blobs from MediaRecorder (100 ms timeslices)
 * or, when the server asks for PCM (`useAudioWorklet`), as 16 kHz s16le ArrayBuffers
 * from the "pcm-16k" AudioWorklet. Each capture's `stop()` resolves after its last chunk, and its
 * `level()` reads the input level (0 silent … 1 full scale) from an AnalyserNode on the same
 * stream, in the same audio graph as the PCM capture: the page never opens the microphone twice.
 */
const TIMESLICE_MS = 100;
const WEBM_OPUS = "audio/webm;codecs=opus";

export async function listMicrophones() {
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices.filter((device) => device.kind === "audioinput");
}

export function openMicrophone(deviceId) {
  const audio = deviceId ? { deviceId: { exact: deviceId } } : true;
  return navigator.mediaDevices.getUserMedia({ audio, video: false });
}

export function closeMicrophone(stream) {
  if (stream) stream.getTracks().forEach((track) => track.stop());
}

const FLOOR_DB = -60; // the meter's zero: quieter than a quiet room through a laptop microphone

/** A `level()` reader: the RMS of the latest 1024 samples in dBFS, mapped from FLOOR_DB..0 dB to 0..1. */
function levelReader(context, source) {
  const analyser = context.createAnalyser();
  analyser.fftSize = 1024;
  source.connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  return () => {
    analyser.getFloatTimeDomainData(samples);
    let sum = 0;
    for (const sample of samples) sum += sample * sample;
    const rms = Math.sqrt(sum / samples.length);
    if (rms === 0) return 0;
    return Math.max(0, Math.min(1, (20 * Math.log10(rms) - FLOOR_DB) / -FLOOR_DB));
  };
}

export function startCapture(stream, usePcm, onChunk) {
  return usePcm ? startPcm(stream, onChunk) : startMediaRecorder(stream, onChunk);
}

function startMediaRecorder(stream, onChunk) {
  const options = MediaRecorder.isTypeSupported(WEBM_OPUS) ? { mimeType: WEBM_OPUS } : {};
  const recorder = new MediaRecorder(stream, options);
  recorder.addEventListener("dataavailable", (event) => {
    if (event.data && event.data.size > 0) onChunk(event.data);
  });
  recorder.start(TIMESLICE_MS);
  let context = null; // the meter's graph: MediaRecorder needs none, so it is only a listener on the stream
  let level = () => 0;
  try {
    context = new AudioContext();
    level = levelReader(context, context.createMediaStreamSource(stream));
    context.resume().catch(() => {});
  } catch (error) {
    console.warn("no input level meter:", error);
  }
  return {
    kind: `${recorder.mimeType.startsWith("audio/webm") ? "WebM/Opus" : recorder.mimeType} via MediaRecorder`,
    level,
    stop: async () => {
      await new Promise((resolve) => {
        if (recorder.state === "inactive") return resolve();
        recorder.addEventListener("stop", () => resolve(), { once: true }); // after the last dataavailable
        recorder.stop();
      });
      if (context) await context.close();
    },
  };
}

async function startPcm(stream, onChunk) {
  const context = new AudioContext();
  await context.audioWorklet.addModule(new URL("./pcm-worklet.js", import.meta.url));
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "pcm-16k", {
    numberOfInputs: 1,
    numberOfOutputs: 0,
    processorOptions: { targetRate: 16000, frameMs: TIMESLICE_MS },
  });
  let flushed = null;
  node.port.onmessage = (event) => {
    if (event.data.pcm.byteLength > 0) onChunk(event.data.pcm);
    if (event.data.last && flushed) flushed();
  };
  source.connect(node);
  return {
    kind: `16 kHz PCM via AudioWorklet (from ${context.sampleRate / 1000} kHz)`,
    level: levelReader(context, source),
    stop: async () => {
      await new Promise((resolve) => {
        flushed = resolve;
        node.port.postMessage({ type: "flush" });
        setTimeout(resolve, 500); // a suspended context never answers
      });
      source.disconnect();
      await context.close();
    },
  };
}
