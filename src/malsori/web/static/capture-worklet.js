// AudioWorklet: the browser's float32 microphone audio at its own rate (44.1 or 48 kHz, usually)
// becomes 16 kHz mono int16 here, off the main thread, so the page only forwards ready frames.
//
// Resampling: a windowed-sinc low-pass (cut-off just under 8 kHz, the new Nyquist) evaluated at the
// two input samples around each output instant, then linear interpolation between them. That keeps
// aliasing out (plain decimation folds 8-24 kHz back into the speech band) for any ratio, integer
// (48k) or not (44.1k), at about 2 x 63 multiply-adds per output sample.

const TARGET_RATE = 16000;
const TAPS = 63;

function lowPass(ratio) {
  if (ratio <= 1) return new Float32Array([1]);
  const cutoff = 0.45 / ratio; // cycles per input sample: 7.2 kHz at 16 kHz out
  const half = (TAPS - 1) / 2;
  const taps = new Float32Array(TAPS);
  let sum = 0;
  for (let n = 0; n < TAPS; n++) {
    const x = n - half;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const blackman = 0.42 - 0.5 * Math.cos((2 * Math.PI * n) / (TAPS - 1)) + 0.08 * Math.cos((4 * Math.PI * n) / (TAPS - 1));
    taps[n] = sinc * blackman;
    sum += taps[n];
  }
  for (let n = 0; n < TAPS; n++) taps[n] /= sum; // unity gain at DC
  return taps;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const frameMs = (options.processorOptions && options.processorOptions.frameMs) || 100;
    this.ratio = sampleRate / TARGET_RATE; // `sampleRate` is the context's rate (worklet global)
    this.taps = lowPass(this.ratio);
    this.half = (this.taps.length - 1) / 2;
    this.input = new Float32Array(16384);
    this.inputLength = 0;
    this.position = this.half; // fractional index of the next output sample in `input`
    this.frameSamples = Math.round((TARGET_RATE * frameMs) / 1000);
    this.frame = new Int16Array(this.frameSamples);
    this.frameLength = 0;
    this.energy = 0;
    this.port.postMessage({ type: "format", inputRate: sampleRate, outputRate: TARGET_RATE, frameSamples: this.frameSamples });
  }

  filtered(index) {
    const taps = this.taps;
    const start = index - this.half;
    let acc = 0;
    for (let k = 0; k < taps.length; k++) acc += this.input[start + k] * taps[k];
    return acc;
  }

  append(channels) {
    const count = channels[0].length;
    if (this.inputLength + count > this.input.length) {
      const grown = new Float32Array(Math.max(this.input.length * 2, this.inputLength + count));
      grown.set(this.input.subarray(0, this.inputLength));
      this.input = grown;
    }
    for (let i = 0; i < count; i++) {
      let sample = 0;
      for (let c = 0; c < channels.length; c++) sample += channels[c][i];
      this.input[this.inputLength + i] = sample / channels.length; // down-mix to mono
    }
    this.inputLength += count;
  }

  emit(value) {
    const clamped = value > 1 ? 1 : value < -1 ? -1 : value;
    this.frame[this.frameLength++] = Math.round(clamped * 32767);
    this.energy += clamped * clamped;
    if (this.frameLength === this.frameSamples) {
      const rms = Math.sqrt(this.energy / this.frameLength);
      const buffer = this.frame.buffer;
      // Transferred, not copied: the buffer (and this.frame with it) is detached after this call.
      this.port.postMessage({ type: "frame", pcm: buffer, rms }, [buffer]);
      this.frame = new Int16Array(this.frameSamples);
      this.frameLength = 0;
      this.energy = 0;
    }
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // no source connected yet
    this.append(channels);
    while (Math.floor(this.position) + 1 + this.half < this.inputLength) {
      const index = Math.floor(this.position);
      const frac = this.position - index;
      const a = this.filtered(index);
      const b = frac > 0 ? this.filtered(index + 1) : a;
      this.emit(a + (b - a) * frac);
      this.position += this.ratio;
    }
    // Drop what no later output sample needs, keeping `half` samples of history for the filter.
    const keepFrom = Math.floor(this.position) - this.half;
    if (keepFrom > 0) {
      this.input.copyWithin(0, keepFrom, this.inputLength);
      this.inputLength -= keepFrom;
      this.position -= keepFrom;
    }
    return true;
  }
}

registerProcessor("malsori-capture", CaptureProcessor);
