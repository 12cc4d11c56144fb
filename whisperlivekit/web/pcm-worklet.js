/**
 * AudioWorklet processor "pcm-16k": mixes the microphone to mono, resamples it to
 * 16 kHz (averaging each output sample's window of input samples, a crude low-pass),
 * and posts signed 16-bit little-endian frames of ~100 ms to the page.
 * The page sends {type: "flush"} when recording stops; the processor answers with
 * the last partial frame marked `last: true`.
 */
class Pcm16kProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const { targetRate = 16000, frameMs = 100 } = options.processorOptions || {};
    this.step = sampleRate / targetRate; // input samples per output sample
    this.frameLength = Math.round((targetRate * frameMs) / 1000);
    this.newFrame();
    this.sum = 0;
    this.count = 0;
    this.untilNext = this.step;
    this.port.onmessage = (event) => {
      if (event.data && event.data.type === "flush") this.post(true);
    };
  }

  newFrame() {
    this.frame = new Int16Array(this.frameLength);
    this.filled = 0;
  }

  post(last) {
    // Int16Array is little-endian on every platform browsers run on.
    const pcm = this.frame.slice(0, this.filled).buffer;
    this.port.postMessage({ pcm, last }, [pcm]);
    this.newFrame();
  }

  push(value) {
    const clamped = Math.max(-1, Math.min(1, value));
    this.frame[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
    if (this.filled === this.frameLength) this.post(false);
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true;
    const length = channels[0].length;
    for (let i = 0; i < length; i++) {
      let mono = 0;
      for (const channel of channels) mono += channel[i];
      this.sum += mono / channels.length;
      this.count += 1;
      this.untilNext -= 1;
      if (this.untilNext <= 0) {
        this.push(this.sum / this.count);
        this.sum = 0;
        this.count = 0;
        this.untilNext += this.step;
      }
    }
    return true;
  }
}

registerProcessor("pcm-16k", Pcm16kProcessor);
