// The microphone's samples for the page's live tagging (live.js): an AudioWorklet runs on the audio thread, so no
// sample is lost while the page is busy. It hands them on in blocks; on "flush" it hands on the rest, then null.
"use strict";

const BLOCK = 4096;  // samples per message to the page (85 ms at 48 kHz)

class BlatCapture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(BLOCK);
    this.n = 0;
    this.done = false;
    this.port.onmessage = () => {  // "flush": the last samples, then the end
      this.port.postMessage(this.block.slice(0, this.n));
      this.port.postMessage(null);
      this.done = true;
    };
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];  // mono: the first channel
    if (this.done || !channel) return !this.done;
    for (let i = 0; i < channel.length; i++) {
      this.block[this.n++] = channel[i];
      if (this.n === BLOCK) {
        this.port.postMessage(this.block);
        this.block = new Float32Array(BLOCK);
        this.n = 0;
      }
    }
    return true;
  }
}

registerProcessor("blat-capture", BlatCapture);
