// The page: reads the file the user drops or picks, hands it to the worker (worker.js, where the
// WebAssembly explainer runs) and draws what comes back. No framework, no network: every file
// this page needs is in its folder.

const $ = (id) => document.getElementById(id);
const view = $("view");

let worker = null;
let nextId = 0;
const pending = new Map();
// The model the user picked (null: the embedded demo model), reloaded when a worker restarts.
let pickedModel = null;
let model = null;

function startWorker() {
    worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    worker.onmessage = ({ data }) => {
        const call = pending.get(data.id);
        pending.delete(data.id);
        if (data.ok) call.resolve(data);
        else call.reject(Object.assign(new Error(data.message), { crashed: data.crashed }));
    };
    // A worker that failed to start (its script or the .wasm missing) or died outside a call.
    worker.onerror = (event) => {
        event.preventDefault();
        failAll(new Error(`the explainer could not run: ${event.message || "its script did not load"}`));
    };
}

function failAll(error) {
    for (const call of pending.values()) call.reject(error);
    pending.clear();
}

function ask(type, payload = {}, transfer = []) {
    const id = nextId++;
    return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        worker.postMessage({ id, type, ...payload }, transfer);
    });
}

/// Run `type` in the worker; when WebAssembly stopped there, start a fresh worker with the same
/// model before rethrowing, so that the next file works.
async function run(type, payload, transfer) {
    try {
        return await ask(type, payload, transfer);
    } catch (error) {
        if (error.crashed) {
            worker.terminate();
            failAll(error);
            startWorker();
            await loadModel(pickedModel);
        }
        throw error;
    }
}

function status(text) {
    $("status").textContent = text;
}

function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
}

async function loadModel(picked) {
    const bytes = picked ? picked.bytes.slice(0) : null; // keep our copy for a restart
    model = await run("load", picked ? { model: { bytes, name: picked.name } } : {}, bytes ? [bytes] : []);
    $("model-name").textContent = `${model.modelName} (${model.architecture})`;
    $("notice").textContent = model.notice ?? "";
    $("notice").hidden = !model.notice;
    $("range").textContent = String(Number(model.overlayLogitRange.toPrecision(3)));
    view.width = view.height = model.side;
    return model;
}

function ms(value) {
    return `${Math.round(value)} ms`;
}

async function explain(file) {
    showError("");
    status(`Explaining ${file.name}…`);
    document.body.dataset.state = "working";
    try {
        const bytes = await file.arrayBuffer();
        const result = await run("predict", { bytes, name: file.name }, [bytes]);
        const [decode, preprocess, tile, backend, aggregate] = result.timingsMs;
        status(
            `${file.name}: explained in ${ms(result.elapsedMs)} (decode ${ms(decode)}, preprocess ${ms(preprocess)}, ` +
                `model ${ms(tile + backend + aggregate)}), in this browser.`,
        );
        showResult(file.name, result);
        if (!document.body.dataset.firstResultMs) document.body.dataset.firstResultMs = String(performance.now());
        document.body.dataset.state = "done";
    } catch (error) {
        status("");
        showError(`${file.name}: ${error.message}`);
        document.body.dataset.state = "error";
    }
    // How many files have been answered (a result or an error): what a test waits on.
    document.body.dataset.completed = String(Number(document.body.dataset.completed ?? 0) + 1);
}

function showResult(name, result) {
    $("result").hidden = false;
    drawImage(result.image);
    $("caption").textContent = `${name}, as the model saw it. Click a finding to see its evidence map.`;
    const list = $("findings");
    list.replaceChildren();
    // Model order, as the CLI prints them.
    model.classes.forEach((name, index) => {
        const p = result.probabilities[index];
        const button = document.createElement("button");
        button.className = "finding";
        button.dataset.class = name;
        button.dataset.index = String(index);
        button.dataset.probability = String(p);
        button.dataset.logit = String(result.logits[index]);
        button.title = `logit ${result.logits[index].toFixed(3)}`;
        const label = document.createElement("span");
        label.className = "name";
        label.textContent = name;
        const bar = document.createElement("span");
        bar.className = "bar";
        const fill = document.createElement("span");
        fill.className = p > 0.5 ? "fill high" : "fill";
        fill.style.width = `${(100 * p).toFixed(1)}%`;
        bar.append(fill);
        const value = document.createElement("span");
        value.className = "value";
        value.textContent = `${(100 * p).toFixed(1)}%`;
        button.append(label, bar, value);
        button.addEventListener("click", () => showOverlay(index, button));
        const item = document.createElement("li");
        item.append(button);
        list.append(item);
    });
}

function drawImage(rgba) {
    const side = model.side;
    view.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(rgba.buffer), side, side), 0, 0);
}

async function showOverlay(index, button) {
    showError("");
    try {
        const { rgba } = await run("overlay", { index });
        drawImage(rgba);
        for (const b of document.querySelectorAll(".finding")) b.classList.toggle("selected", b === button);
        $("caption").textContent =
            `${model.classes[index]}: each patch's own logit, red = evidence for, blue = against (as medpatch predict --out draws it).`;
        document.body.dataset.overlay = model.classes[index];
    } catch (error) {
        showError(error.message);
    }
}

async function pickModel(file) {
    showError("");
    status(`Loading ${file.name}…`);
    const picked = { bytes: await file.arrayBuffer(), name: file.name };
    try {
        await loadModel(picked);
        pickedModel = picked;
        $("result").hidden = true;
        status(`Model ${file.name} loaded. Drop an X-ray.`);
    } catch (error) {
        // The worker keeps the model it had.
        status("");
        showError(`${file.name}: ${error.message}`);
    }
    document.body.dataset.modelsLoaded = String(Number(document.body.dataset.modelsLoaded ?? 0) + 1);
}

const drop = $("drop");
for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
        event.preventDefault();
        drop.classList.add("over");
    });
}
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const file = event.dataTransfer?.files?.[0];
    if (file) explain(file);
});
// A file dropped anywhere else must not make the browser navigate away to it.
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

$("image-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) explain(file);
});
$("model-file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    event.target.value = "";
    if (file) pickModel(file);
});

startWorker();
loadModel(null).then(
    (m) => {
        status(`Model ready in ${ms(m.loadMs)}. Drop an X-ray.`);
        document.body.dataset.readyMs = String(performance.now());
        document.body.dataset.state = "ready";
    },
    (error) => {
        status("");
        showError(`The explainer could not start: ${error.message}`);
        document.body.dataset.state = "error";
    },
);
