/**
 * Microphone capture. `openMicrophone` opens the chosen input; `startCapture` streams
 * it to a callback either as WebM/Opus blobs from MediaRecorder (100 ms timeslices)
 * or, when the server asks for PCM (`useAudioWorklet`), as 16 kHz s16le ArrayBuffers
 * from the "pcm-16k" AudioWorklet. Each capture's `stop()` resolves after its last chunk.
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
  return {
    kind: `${recorder.mimeType.startsWith("audio/webm") ? "WebM/Opus" : recorder.mimeType} via MediaRecorder`,
    stop: () =>
      new Promise((resolve) => {
        if (recorder.state === "inactive") return resolve();
        recorder.addEventListener("stop", () => resolve(), { once: true }); // after the last dataavailable
        recorder.stop();
      }),
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
