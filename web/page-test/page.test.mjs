// The web page (web/www) in headless Chromium: Debian's /usr/bin/chromium driven by playwright-core
// (no browser download), the page served from its folder on 127.0.0.1 as any static server would.
// An X-ray is dropped on the page and its numbers are checked against the native CLI's
// (`medpatch predict --provider tract`, MEDPATCH_BIN); a screenshot is saved and checked (result
// visible, overlay coloured); bad files and models must give a message on the page, which keeps
// working. scripts/test.sh runs it after scripts/web-build.sh.
//
// Environment: MEDPATCH_BIN (default target/debug/medpatch), CHROMIUM (default /usr/bin/chromium),
// MEDPATCH_WEB_TEST_OUT (screenshot and timings; default target/web-test), MEDPATCH_WEB_TIMING_RUNS
// (default 0: the per-image timing of docs/web.md, that many drops of the bundled PNG).

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { chromium } from "playwright-core";

const root = path.resolve(import.meta.dirname, "../..");
const www = path.join(root, "web/www");
const out = process.env.MEDPATCH_WEB_TEST_OUT ?? path.join(root, "target/web-test");
const medpatch = process.env.MEDPATCH_BIN ?? path.join(root, "target/debug/medpatch");
const browserPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const PNG = path.join(root, "assets/00001369_000.png");
const JPEG = path.join(root, "assets/synthetic-pneumothorax.jpg");
const DEMO_MODEL = path.join(root, "models/default/medpatch-default.onnx");
// A real DICOM radiograph, where ../shared is beside the checkout (as the Rust tests find it).
const DICOM = path.join(root, "../shared/data/cxr/dicom/RG1_UNCR.dcm");

// The browser's logits against the native build's: the browser test's bound (web/tests/browser.rs);
// the CLI prints 6 decimals.
const LOGIT_TOLERANCE = 1e-4;

// As the machine's probe ran it, as root: no sandbox, no GPU, and nothing that calls out to the
// network (this machine's network is closed; Chromium would keep retrying).
const CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

const MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".png": "image/png",
};

let server;
let baseUrl;
let profileDir;
let context;
let page;
const pageErrors = [];
const timings = {};

/// What any static server does: files under www, nothing else.
function serve(request, response) {
    const url = new URL(request.url, "http://127.0.0.1");
    const file = path.join(www, decodeURIComponent(url.pathname === "/" ? "/index.html" : url.pathname));
    if (!file.startsWith(www + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
        response.writeHead(404).end("not found");
        return;
    }
    response.writeHead(200, { "content-type": MIME[path.extname(file)] ?? "application/octet-stream" });
    fs.createReadStream(file).pipe(response);
}

/// `medpatch predict --provider tract` on `file`: its JSON record.
function nativePrediction(file, ...extra) {
    const stdout = execFileSync(medpatch, ["predict", "--provider", "tract", ...extra, file], {
        encoding: "utf8",
        stdio: ["ignore", "pipe", "ignore"],
    });
    return JSON.parse(stdout.trim().split("\n")[0]);
}

/// The findings as the page shows them.
function findings() {
    return page.$$eval(".finding", (buttons) =>
        buttons.map((b) => ({
            name: b.dataset.class,
            probability: Number(b.dataset.probability),
            logit: Number(b.dataset.logit),
            shown: b.querySelector(".value").textContent,
            bar: b.querySelector(".fill").style.width,
        })),
    );
}

async function completed() {
    return Number((await page.getAttribute("body", "data-completed")) ?? 0);
}

/// Wait until the page has answered one more file than `before` (a result or an error).
async function answered(before) {
    await page.waitForFunction((n) => Number(document.body.dataset.completed ?? 0) > n, before, { timeout: 120_000 });
}

/// Drop `bytes` named `name` on the drop zone, as a user dragging a file there.
async function dropFile(name, bytes) {
    const before = await completed();
    const dataTransfer = await page.evaluateHandle(
        ({ name, base64 }) => {
            const data = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([data], name));
            return transfer;
        },
        { name, base64: Buffer.from(bytes).toString("base64") },
    );
    await page.dispatchEvent("#drop", "drop", { dataTransfer });
    await answered(before);
}

/// Pick `bytes` named `name` with the file chooser.
async function pickFile(name, bytes) {
    const before = await completed();
    await page.setInputFiles("#image-file", { name, mimeType: "application/octet-stream", buffer: Buffer.from(bytes) });
    await answered(before);
}

async function pickModel(name, bytes) {
    const before = Number((await page.getAttribute("body", "data-models-loaded")) ?? 0);
    await page.setInputFiles("#model-file", { name, mimeType: "application/octet-stream", buffer: Buffer.from(bytes) });
    await page.waitForFunction((n) => Number(document.body.dataset.modelsLoaded ?? 0) > n, before, { timeout: 120_000 });
}

async function errorText() {
    return (await page.isVisible("#error")) ? page.textContent("#error") : null;
}

/// The page's findings equal the native CLI's numbers for the same file.
async function assertMatchesNative(native, what) {
    assert.equal(await errorText(), null, `${what}: no error on the page`);
    const rows = await findings();
    assert.deepEqual(
        rows.map((r) => r.name),
        Object.keys(native.logits),
        `${what}: the findings in model order`,
    );
    let worst = 0;
    for (const row of rows) {
        const logit = native.logits[row.name];
        const probability = native.probabilities[row.name];
        worst = Math.max(worst, Math.abs(row.logit - logit));
        assert.ok(Math.abs(row.logit - logit) <= LOGIT_TOLERANCE, `${what}, ${row.name}: page ${row.logit}, CLI ${logit}`);
        assert.ok(Math.abs(row.probability - probability) <= LOGIT_TOLERANCE, `${what}, ${row.name}: probability`);
        // What a reader sees: the percentage to one decimal, and a bar as long.
        assert.match(row.shown, /^\d+\.\d%$/);
        assert.ok(Math.abs(parseFloat(row.shown) - 100 * probability) <= 0.05 + 1e-3, `${what}, ${row.name}: ${row.shown}`);
        assert.equal(parseFloat(row.bar), parseFloat(row.shown), `${what}, ${row.name}: bar ${row.bar}`);
    }
    console.log(`${what}: max |logit - CLI| = ${worst.toExponential(2)}`);
    return rows;
}

/// Milliseconds the page reports for the last file ("explained in N ms").
async function elapsedMs() {
    const status = await page.textContent("#status");
    const match = status.match(/explained in (\d+) ms/);
    assert.ok(match, `status: ${status}`);
    return Number(match[1]);
}

before(async () => {
    assert.ok(fs.existsSync(path.join(www, "pkg/medpatch_web_bg.wasm")), "web/www/pkg is missing: run scripts/web-build.sh");
    assert.ok(fs.existsSync(medpatch), `${medpatch} is missing: build medpatch (cargo build) or set MEDPATCH_BIN`);
    fs.mkdirSync(out, { recursive: true });
    server = http.createServer(serve);
    await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
    baseUrl = `http://127.0.0.1:${server.address().port}/`;
    profileDir = fs.mkdtempSync(path.join(os.tmpdir(), "medpatch-chromium-"));
    context = await chromium.launchPersistentContext(profileDir, {
        executablePath: browserPath,
        headless: true,
        args: CHROMIUM_FLAGS,
        viewport: { width: 1100, height: 900 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on("pageerror", (error) => pageErrors.push(String(error)));
    await page.goto(baseUrl);
    await page.waitForFunction(() => ["ready", "error"].includes(document.body.dataset.state), null, { timeout: 120_000 });
    assert.equal(await errorText(), null, "the explainer started");
    timings.readyMs = Number(await page.getAttribute("body", "data-ready-ms"));
});

after(async () => {
    await context?.close();
    await new Promise((resolve) => (server ? server.close(resolve) : resolve()));
    if (profileDir) fs.rmSync(profileDir, { recursive: true, force: true });
    fs.writeFileSync(path.join(out, "timings.json"), JSON.stringify(timings, null, 2) + "\n");
});

test("a dropped X-ray gets the CLI's numbers, its overlay and the time taken", { timeout: 300_000 }, async () => {
    const native = nativePrediction(JPEG);
    await dropFile("synthetic-pneumothorax.jpg", fs.readFileSync(JPEG));
    timings.firstResultMs = Number(await page.getAttribute("body", "data-first-result-ms"));
    timings.jpegMs = await elapsedMs();
    await assertMatchesNative(native, "dropped JPEG");
    assert.match(await page.textContent("#notice"), /trained on synthetic X-rays only: on real X-rays its outputs mean nothing/);
    assert.ok(await page.isVisible("#notice"));

    await page.click('.finding[data-class="Pneumothorax"]');
    await page.waitForFunction(() => document.body.dataset.overlay === "Pneumothorax");
    assert.equal(await errorText(), null);
    // The overlay on the canvas: red where the patches say Pneumothorax, blue against.
    const canvas = await page.evaluate(() => {
        const view = document.getElementById("view");
        const { data } = view.getContext("2d").getImageData(0, 0, view.width, view.height);
        let red = 0;
        let blue = 0;
        for (let i = 0; i < data.length; i += 4) {
            if (data[i] > data[i + 2] + 32) red++;
            if (data[i + 2] > data[i] + 32) blue++;
        }
        return { red, blue, pixels: data.length / 4 };
    });
    assert.ok(canvas.red > canvas.pixels / 100, `red overlay pixels: ${JSON.stringify(canvas)}`);

    const screenshot = path.join(out, "page.png");
    await page.screenshot({ path: screenshot, fullPage: true });
    // The screenshot as a reader sees it, decoded by the browser: the overlay is coloured where the
    // canvas is, and the bars are drawn beside it.
    const boxes = await page.evaluate(() => {
        const box = (el) => {
            const r = el.getBoundingClientRect();
            return { x: Math.round(r.x + scrollX), y: Math.round(r.y + scrollY), w: Math.round(r.width), h: Math.round(r.height) };
        };
        return { canvas: box(document.getElementById("view")), findings: box(document.getElementById("findings")) };
    });
    const seen = await page.evaluate(
        async ({ base64, boxes }) => {
            const blob = await (await fetch(`data:image/png;base64,${base64}`)).blob();
            const bitmap = await createImageBitmap(blob);
            const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
            const context = canvas.getContext("2d");
            context.drawImage(bitmap, 0, 0);
            const count = ({ x, y, w, h }, test) => {
                const { data } = context.getImageData(x, y, w, h);
                let n = 0;
                for (let i = 0; i < data.length; i += 4) if (test(data[i], data[i + 1], data[i + 2])) n++;
                return { n, of: data.length / 4 };
            };
            return {
                colouredInCanvas: count(boxes.canvas, (r, g, b) => Math.max(r, g, b) - Math.min(r, g, b) > 32),
                // The bars' fill colours (style.css): #6f8fb5, and #c0392b above 0.5.
                barPixels: count(boxes.findings, (r, g, b) =>
                    (Math.abs(r - 0x6f) < 8 && Math.abs(g - 0x8f) < 8 && Math.abs(b - 0xb5) < 8) ||
                    (Math.abs(r - 0xc0) < 8 && Math.abs(g - 0x39) < 8 && Math.abs(b - 0x2b) < 8)),
            };
        },
        { base64: fs.readFileSync(screenshot).toString("base64"), boxes },
    );
    assert.ok(seen.colouredInCanvas.n > seen.colouredInCanvas.of / 100, `screenshot overlay: ${JSON.stringify(seen)}`);
    assert.ok(seen.barPixels.n > 500, `screenshot bars: ${JSON.stringify(seen)}`);
    console.log(`screenshot ${screenshot}: ${JSON.stringify(seen)}`);

    const png = nativePrediction(PNG);
    await pickFile("00001369_000.png", fs.readFileSync(PNG));
    timings.pngMs = await elapsedMs();
    await assertMatchesNative(png, "picked PNG");
});

test("a real DICOM radiograph gets the CLI's numbers", { timeout: 300_000 }, async (t) => {
    if (!fs.existsSync(DICOM)) {
        t.skip(`${DICOM} not found (../shared absent)`);
        return;
    }
    const native = nativePrediction(DICOM);
    await pickFile("RG1_UNCR.dcm", fs.readFileSync(DICOM));
    timings.dicomMs = await elapsedMs();
    await assertMatchesNative(native, "DICOM");
});

test("bad files give a message on the page, and the page goes on", { timeout: 300_000 }, async () => {
    const png = fs.readFileSync(PNG);
    const cases = [
        ["truncated.png", png.subarray(0, 4000), /truncated\.png: .*corrupt or truncated PNG data/],
        ["notes.txt", Buffer.from("these are notes, not an X-ray"), /notes\.txt: .*unrecognised file format/],
        ["empty.dcm", Buffer.alloc(0), /empty\.dcm: .*empty/],
    ];
    for (const [name, bytes, expected] of cases) {
        await dropFile(name, bytes);
        assert.match((await errorText()) ?? "(no message)", expected);
        assert.equal(await page.getAttribute("body", "data-state"), "error");
    }
    await dropFile("synthetic-pneumothorax.jpg", fs.readFileSync(JPEG));
    await assertMatchesNative(nativePrediction(JPEG), "after the bad files");
});

test("a picked model is checked, then used", { timeout: 300_000 }, async () => {
    await pickModel("photo.onnx", fs.readFileSync(PNG));
    assert.match((await errorText()) ?? "(no message)", /photo\.onnx: .*not an ONNX model/);
    // The demo model's file, picked: the same numbers as the CLI's --model with it; no demo notice
    // (the page does not know what a picked model was trained on).
    await pickModel("medpatch-default.onnx", fs.readFileSync(DEMO_MODEL));
    assert.equal(await errorText(), null);
    assert.match(await page.textContent("#model-name"), /^medpatch-default\.onnx /);
    assert.equal(await page.isVisible("#notice"), false);
    await dropFile("00001369_000.png", fs.readFileSync(PNG));
    await assertMatchesNative(nativePrediction(PNG, "--model", DEMO_MODEL), "picked model");
    assert.deepEqual(pageErrors, [], "uncaught errors in the page");
});

test("per-image time (MEDPATCH_WEB_TIMING_RUNS drops of the bundled PNG)", { timeout: 600_000 }, async (t) => {
    const runs = Number(process.env.MEDPATCH_WEB_TIMING_RUNS ?? 0);
    if (!runs) {
        t.skip("MEDPATCH_WEB_TIMING_RUNS is 0");
        return;
    }
    const png = fs.readFileSync(PNG);
    const elapsed = [];
    for (let i = 0; i < runs; i++) {
        await dropFile("00001369_000.png", png);
        elapsed.push(await elapsedMs());
    }
    elapsed.sort((a, b) => a - b);
    timings.perImageMs = { runs: elapsed, median: elapsed[Math.floor(elapsed.length / 2)] };
    console.log(`per-image time over ${runs} drops: ${JSON.stringify(timings.perImageMs)}`);
});
