// Measurement hooks of the call page (only with ?measure=1): audio levels of the microphone and the replica's
// voice, and how much the replica's mouth moves per displayed video frame. Benchmarks and the browser tests
// read them from window.duet; a call without ?measure=1 creates none of this.

const MAX = 200000; // entries kept per array (~33 minutes of 10 ms levels)

function append(arr, item) {
  arr.push(item);
  if (arr.length > MAX * 1.1) arr.splice(0, arr.length - MAX); // drop the oldest, in chunks
}

// One AudioContext, one "duet-meter" worklet node per stream; levels[key] gets [performance.now() ms, rms]
// every 10 ms, the time being when that audio reaches the context's output.
export class Levels {
  constructor(duet) {
    this.duet = duet;
    // created inside the Join click, so the autoplay policy lets it run
    this.ctx = new AudioContext();
    this.ctx.resume().catch(() => {});
    this.ready = this.ctx.audioWorklet.addModule("/web/meter.js");
    this.sink = this.ctx.createGain();
    this.sink.gain.value = 0; // the meters must be pulled by the destination, but stay silent
    this.sink.connect(this.ctx.destination);
    this.nodes = [];
  }

  async attach(stream, key) {
    await this.ready;
    if (this.ctx.state === "closed") return;
    const source = this.ctx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(this.ctx, "duet-meter", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
    });
    node.port.onmessage = (e) => this.collect(key, e.data);
    source.connect(node).connect(this.sink);
    this.nodes.push({ source, node });
  }

  collect(key, batch) {
    if (!this.duet.measure) return;
    const toMs = this.clock();
    const out = this.duet.levels[key];
    for (let i = 0; i < batch.length; i += 2) append(out, [toMs(batch[i]), batch[i + 1]]);
  }

  // context seconds → performance.now() ms at the audio output
  clock() {
    const ts = this.ctx.getOutputTimestamp ? this.ctx.getOutputTimestamp() : null;
    if (ts && ts.performanceTime > 0) return (t) => ts.performanceTime + (t - ts.contextTime) * 1000;
    const now = performance.now();
    const cur = this.ctx.currentTime;
    const lag = (this.ctx.outputLatency || this.ctx.baseLatency || 0) * 1000;
    return (t) => now + (t - cur) * 1000 + lag;
  }

  stop() {
    for (const { source, node } of this.nodes) {
      node.port.postMessage("stop");
      source.disconnect();
      node.disconnect();
    }
    this.nodes = [];
    this.ctx.close().catch(() => {});
  }
}

// Mean absolute luminance change (0..255) inside duet.mouthBox between consecutive displayed frames of
// `video`; duet.frames gets [presentation time ms, change] per frame.
export class MouthMotion {
  constructor(video, duet) {
    this.video = video;
    this.duet = duet;
    this.canvas = document.createElement("canvas");
    this.canvas.width = 64;
    this.canvas.height = 32;
    this.g = this.canvas.getContext("2d", { willReadFrequently: true });
    this.prev = null;
    this.prevKey = "";
    this.running = false;
  }

  start() {
    if (this.running) return;
    this.running = true;
    const v = this.video;
    if (typeof v.requestVideoFrameCallback === "function") {
      const onFrame = (now, meta) => {
        if (!this.running) return;
        this.sample(meta && meta.presentationTime ? meta.presentationTime : now);
        v.requestVideoFrameCallback(onFrame);
      };
      v.requestVideoFrameCallback(onFrame);
    } else {
      // no per-frame callback: poll each animation frame for a new decoded frame
      let seen = -1;
      const poll = () => {
        if (!this.running) return;
        const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : null;
        const n = q ? q.totalVideoFrames : -1;
        if (n !== seen) {
          seen = n;
          this.sample(performance.now());
        }
        requestAnimationFrame(poll);
      };
      requestAnimationFrame(poll);
    }
  }

  stop() {
    this.running = false;
  }

  sample(t) {
    if (!this.duet.measure) return;
    const v = this.video;
    const w = v.videoWidth;
    const h = v.videoHeight;
    if (!w || !h) return;
    const [bx, by, bw, bh] = this.duet.mouthBox;
    const key = `${w}x${h}:${this.duet.mouthBox.join(",")}`;
    if (key !== this.prevKey) {
      this.prev = null; // a new size or box: no previous frame to compare with
      this.prevKey = key;
    }
    const { width, height } = this.canvas;
    this.g.drawImage(v, bx * w, by * h, bw * w, bh * h, 0, 0, width, height);
    const px = this.g.getImageData(0, 0, width, height).data;
    const lum = new Float32Array(width * height);
    for (let i = 0, j = 0; j < lum.length; i += 4, j++) lum[j] = 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
    if (this.prev) {
      let sum = 0;
      for (let j = 0; j < lum.length; j++) sum += Math.abs(lum[j] - this.prev[j]);
      append(this.duet.frames, [t, sum / lum.length]);
    }
    this.prev = lum;
  }
}
