// The explainer runs in this worker, off the page's thread: the page stays responsive while the
// model works, and when WebAssembly stops (a panic cannot unwind there), only this worker dies;
// the page reports it and starts a fresh one.
import init, { Explainer } from "./pkg/medpatch_web.js";

let explainer = null;
// The last result, kept for its overlays (a wasm object: freed when replaced).
let result = null;

function forget() {
    result?.free();
    result = null;
}

const handlers = {
    // { model?: { bytes, name } } → what the page shows about the model.
    async load({ model }) {
        const started = performance.now();
        await init();
        // A model that fails to load leaves the current one, and its last result, in place.
        const next = model ? Explainer.fromOnnx(new Uint8Array(model.bytes), model.name) : new Explainer();
        forget();
        explainer?.free();
        explainer = next;
        return {
            reply: {
                modelName: explainer.modelName,
                architecture: explainer.architecture,
                classes: explainer.classes(),
                notice: explainer.notice() ?? null,
                side: explainer.side,
                overlayLogitRange: explainer.overlayLogitRange,
                loadMs: performance.now() - started,
            },
        };
    },

    // { bytes, name } → the numbers and the image the model saw.
    predict({ bytes, name }) {
        forget();
        const started = performance.now();
        result = explainer.predict(new Uint8Array(bytes), name);
        const elapsedMs = performance.now() - started;
        const image = result.image();
        return {
            reply: {
                probabilities: Array.from(result.probabilities),
                logits: Array.from(result.logits),
                timingsMs: Array.from(result.timingsMs),
                elapsedMs,
                image,
            },
            transfer: [image.buffer],
        };
    },

    // { index } → the finding's overlay over the last result's image.
    overlay({ index }) {
        if (!result) throw new Error("no result to draw an overlay for");
        const rgba = explainer.overlay(result, index);
        return { reply: { rgba }, transfer: [rgba.buffer] };
    },
};

self.onmessage = async ({ data }) => {
    const { id, type } = data;
    try {
        const { reply, transfer = [] } = await handlers[type](data);
        self.postMessage({ id, ok: true, ...reply }, transfer);
    } catch (error) {
        // A RuntimeError is WebAssembly stopping (a panic); its message is in medpatchPanic.
        const crashed = error instanceof WebAssembly.RuntimeError;
        const message = crashed ? (globalThis.medpatchPanic ?? `WebAssembly stopped: ${error.message}`) : error.message;
        self.postMessage({ id, ok: false, crashed, message });
    }
};
