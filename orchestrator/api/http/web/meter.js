// AudioWorklet processor "duet-meter": the RMS (0..1 float scale) of its input over consecutive 10 ms windows,
// posted to the page in small batches as a flat Float64Array [t0, rms0, t1, rms1, ...], where t is the
// context time (s) of the window's last sample. All input channels are averaged; a disconnected input
// counts as silence, so the windows stay contiguous on the context clock.

const WINDOW_S = 0.01;
const BATCH = 5; // windows per message: 20 messages a second

class Meter extends AudioWorkletProcessor {
  constructor() {
    super();
    this.window = Math.max(1, Math.round(sampleRate * WINDOW_S));
    this.sum = 0;
    this.n = 0;
    this.out = new Float64Array(BATCH * 2);
    this.k = 0;
    this.running = true;
    this.port.onmessage = (e) => {
      if (e.data === "stop") this.running = false;
    };
  }

  process(inputs) {
    const input = inputs[0] || [];
    const channels = input.length;
    const frames = channels ? input[0].length : 128;
    for (let i = 0; i < frames; i++) {
      let s = 0;
      for (let c = 0; c < channels; c++) {
        const x = input[c][i];
        s += x * x;
      }
      this.sum += channels ? s / channels : 0;
      this.n++;
      if (this.n === this.window) {
        this.out[this.k++] = (currentFrame + i + 1) / sampleRate;
        this.out[this.k++] = Math.sqrt(this.sum / this.n);
        this.sum = 0;
        this.n = 0;
        if (this.k === this.out.length) {
          this.port.postMessage(this.out);
          this.out = new Float64Array(BATCH * 2);
          this.k = 0;
        }
      }
    }
    return this.running;
  }
}

registerProcessor("duet-meter", Meter);
