// AudioWorklet of the browser viewer's "talk through my microphone": collects the microphone's
// samples (mono, the AudioContext's rate; the page asks for 16 kHz) into chunks of
// processorOptions.chunk samples (20 ms) and posts each chunk (Float32Array, [-1, 1]) to the page,
// which converts it to PCM16 and sends it over the WebSocket as the audio of its own session.
class Mm2faceMic extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.chunk = (options.processorOptions && options.processorOptions.chunk) || 320;
    this.buf = new Float32Array(this.chunk);
    this.n = 0;
  }

  process(inputs) {
    const ch = inputs[0] && inputs[0][0];
    if (ch) {
      for (let i = 0; i < ch.length; i++) {
        this.buf[this.n++] = ch[i];
        if (this.n === this.chunk) {
          this.port.postMessage(this.buf, [this.buf.buffer]);
          this.buf = new Float32Array(this.chunk);
          this.n = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor('mm2face-mic', Mm2faceMic);
