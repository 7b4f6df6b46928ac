// imgserve demo page: photos in (file picker, drag and drop, paste, camera), POST predict,
// the top-k of each photo as bars, and (a toggle) where the model looked: its class activation
// map drawn on a canvas over the photo. Vanilla JavaScript, no build step, no third-party code.
// Every URL is relative, so the page works at / and behind a proxy under any path.
"use strict";

(() => {
  const MAX_BUSY_RETRIES = 20;
  const DEFAULT_TOP_K = 5;
  const MAX_TOP_K = 100; // the server's documented maximum (app/inference/model.py)
  const TITLES = {
    400: "Bad request",
    401: "API key needed",
    404: "Not found",
    413: "Too large",
    415: "Unsupported format",
    500: "The model failed",
    502: "No server answered",
    503: "Busy",
    504: "Too slow",
  };

  const byId = (id) => document.getElementById(id);
  const el = {
    modelInfo: byId("model-info"),
    keyPanel: byId("key-panel"),
    keyInput: byId("api-key"),
    keyApply: byId("key-apply"),
    dropzone: byId("dropzone"),
    fileInput: byId("file-input"),
    topK: byId("top-k"),
    explain: byId("explain"),
    explainLabel: byId("explain-label"),
    cameraButton: byId("camera-button"),
    camera: byId("camera"),
    cameraVideo: byId("camera-video"),
    cameraSnap: byId("camera-snap"),
    cameraClose: byId("camera-close"),
    error: byId("error"),
    results: byId("results"),
    cardTemplate: byId("card-template"),
    rowTemplate: byId("row-template"),
  };

  const state = {
    apiKey: "", // page memory only: never stored, gone on reload
    model: null, // the entry of v1/models that answers predict (the default model's latest version)
    modelLoad: null, // promise of the model (or null), awaited before the first upload
    topKTouched: false,
    lastFiles: [],
    afterKey: [], // files refused for want of a key, sent again once one is given
    controller: null, // the upload in flight; a new one aborts it
    objectUrls: [],
    stream: null,
  };

  class HttpError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
      this.detail = detail;
    }
  }

  class NetworkError extends Error {}

  // ---- HTTP ------------------------------------------------------------------------------

  function authHeaders() {
    return state.apiKey ? { "X-API-Key": state.apiKey } : {};
  }

  async function detailOf(response) {
    const text = await response.text();
    try {
      const body = JSON.parse(text);
      if (body && typeof body.detail === "string") return body.detail;
    } catch (_) {
      // not JSON: a proxy's own error page (nginx answers 413 and 502 in HTML)
    }
    return `the server answered HTTP ${response.status} ${response.statusText}`.trim();
  }

  function retryAfterSeconds(response) {
    const seconds = Number.parseInt(response.headers.get("Retry-After") || "", 10);
    return Number.isFinite(seconds) ? Math.min(Math.max(seconds, 1), 60) : 1;
  }

  // fetch, and on 503 wait Retry-After with a visible countdown and try again.
  // Resolves to {body, ms}: the answer and the round trip of the attempt that got it.
  async function send(url, options, controller) {
    for (let attempt = 1; ; attempt += 1) {
      const started = performance.now();
      let response;
      try {
        response = await fetch(url, { ...options, headers: authHeaders(), signal: controller.signal });
      } catch (err) {
        if (controller.signal.aborted) throw err;
        throw new NetworkError(`the server could not be reached (${err.message})`);
      }
      if (response.status === 503 && attempt <= MAX_BUSY_RETRIES) {
        const seconds = retryAfterSeconds(response);
        await waitWhileBusy(await detailOf(response), seconds, attempt, controller);
        continue;
      }
      if (!response.ok) throw new HttpError(response.status, await detailOf(response));
      const body = await response.json();
      return { body, ms: performance.now() - started };
    }
  }

  function waitWhileBusy(detail, seconds, attempt, controller) {
    return new Promise((resolve, reject) => {
      const counter = document.createElement("span");
      counter.dataset.testid = "retry-countdown";
      const cancel = document.createElement("button");
      cancel.type = "button";
      cancel.textContent = "Cancel";
      cancel.dataset.testid = "retry-cancel";
      cancel.addEventListener("click", () => controller.abort("cancelled"));
      showMessage("busy", TITLES[503], `${detail}. Trying again in `, counter,
        ` s (attempt ${attempt + 1} of ${MAX_BUSY_RETRIES + 1}). `, cancel);
      let left = seconds;
      let timer = null;
      const tick = () => {
        if (left <= 0) {
          controller.signal.removeEventListener("abort", onAbort);
          resolve();
          return;
        }
        counter.textContent = String(left);
        left -= 1;
        timer = setTimeout(tick, 1000);
      };
      const onAbort = () => {
        clearTimeout(timer);
        reject(controller.signal.reason);
      };
      controller.signal.addEventListener("abort", onAbort, { once: true });
      tick();
    });
  }

  // ---- messages --------------------------------------------------------------------------

  function showMessage(kind, title, ...parts) {
    const strong = document.createElement("strong");
    strong.textContent = `${title}:`;
    el.error.replaceChildren(strong, " ", ...parts);
    el.error.classList.toggle("busy", kind === "busy");
    el.error.hidden = false;
  }

  function hideMessage() {
    el.error.hidden = true;
    el.error.replaceChildren();
  }

  function titleOf(err) {
    if (err instanceof NetworkError) return "Network error";
    if (!(err instanceof HttpError)) return "Unexpected error";
    // The server names the part in every image error ("file #1 'notes.txt': not a decodable image").
    if (err.status === 422) return err.detail.startsWith("file #") ? "Not an image" : "Invalid request";
    return TITLES[err.status] || `HTTP ${err.status}`;
  }

  function showFailure(err) {
    showMessage("error", titleOf(err), err instanceof Error ? err.message : String(err));
  }

  // ---- the model -------------------------------------------------------------------------

  async function loadModel() {
    try {
      const { body } = await send("v1/models", { method: "GET", cache: "no-store" }, new AbortController());
      const model = defaultModel(body);
      if (!model) {
        el.modelInfo.textContent = body.models && body.models.length
          ? `This server serves ${body.models.length} model versions and names no default one.`
          : "The server serves no model.";
        return null;
      }
      state.model = model;
      describeModel(model);
      return model;
    } catch (err) {
      if (err instanceof HttpError && err.status === 401) {
        askForKey();
        el.modelInfo.textContent = "Enter the API key to see which model this server runs.";
        showFailure(err);
      } else {
        el.modelInfo.textContent = `Model details unavailable: ${err.message || err}`;
      }
      return null;
    }
  }

  // What POST predict uses: the default model's latest version (v1/models lists the versions of
  // each name in ascending order); a server that names no default has none.
  function defaultModel(body) {
    const models = body.models || [];
    if (!("default_model" in body)) return models[0] || null;
    const versions = models.filter((m) => m.name === body.default_model);
    return versions.length ? versions[versions.length - 1] : null;
  }

  function explains() {
    return Boolean(state.model && state.model.explanation);
  }

  function describeModel(model) {
    const parts = [`${model.name} version ${model.version}`, `${model.num_classes} classes`];
    if (model.limits) parts.push(`up to ${model.limits.max_images_per_request} images per request`);
    if (model.execution_provider) parts.push(model.execution_provider.replace("ExecutionProvider", ""));
    if (model.precision) parts.push(model.precision);
    el.modelInfo.textContent = parts.join(" · ");
    el.topK.max = String(Math.min(model.num_classes, MAX_TOP_K));
    if (!state.topKTouched) el.topK.value = String(Math.min(DEFAULT_TOP_K, model.num_classes));
    el.explainLabel.hidden = !explains();
  }

  function topK() {
    const max = state.model ? Math.min(state.model.num_classes, MAX_TOP_K) : MAX_TOP_K;
    let k = Number.parseInt(el.topK.value, 10);
    if (!Number.isFinite(k)) k = Math.min(DEFAULT_TOP_K, max);
    k = Math.min(Math.max(k, 1), max);
    el.topK.value = String(k);
    return k;
  }

  function askForKey() {
    el.keyPanel.hidden = false;
    el.keyInput.focus();
  }

  function applyKey() {
    state.apiKey = el.keyInput.value.trim();
    hideMessage();
    state.modelLoad = loadModel();
    state.modelLoad.then((model) => {
      if (!model) return; // still no good key: keep the photos waiting
      const waiting = state.afterKey;
      state.afterKey = [];
      if (waiting.length) classify(waiting);
    });
  }

  // ---- classification --------------------------------------------------------------------

  async function classify(files) {
    if (!files.length) return;
    if (state.controller) state.controller.abort("superseded");
    const controller = new AbortController();
    state.controller = controller;
    hideMessage();
    state.lastFiles = files;
    const cards = renderPending(files);
    await state.modelLoad;
    if (controller.signal.aborted) return;
    const k = topK();
    const explainParameter = el.explain.checked && explains() ? "&explain=true" : "";
    const perRequest = (state.model && state.model.limits && state.model.limits.max_images_per_request) || files.length;
    let done = 0;
    try {
      for (; done < files.length; done += perRequest) {
        const chunk = files.slice(done, done + perRequest);
        const form = new FormData();
        for (const file of chunk) form.append("file", file, file.name || "image");
        const { body, ms } = await send(`predict?top_k=${k}${explainParameter}`, { method: "POST", body: form }, controller);
        hideMessage();
        body.predictions.forEach((prediction, i) => fillCard(cards[done + i], prediction, body, ms));
      }
    } catch (err) {
      if (controller.signal.aborted) {
        if (controller.signal.reason === "cancelled") {
          failCards(cards.slice(done), "Cancelled");
          showMessage("error", "Cancelled", "the server was busy; nothing more was sent.");
        }
        return;
      }
      failCards(cards.slice(done), "Not classified");
      showFailure(err);
      if (err instanceof HttpError && err.status === 401) {
        state.afterKey = files;
        askForKey();
      }
    } finally {
      if (state.controller === controller) state.controller = null;
    }
  }

  function renderPending(files) {
    for (const url of state.objectUrls) URL.revokeObjectURL(url);
    state.objectUrls = [];
    el.results.replaceChildren();
    return files.map((file) => {
      const card = el.cardTemplate.content.firstElementChild.cloneNode(true);
      const name = file.name || "image";
      card.dataset.filename = name;
      card.dataset.state = "pending";
      card.querySelector(".filename").textContent = name;
      card.querySelector(".filename").title = name;
      const box = card.querySelector(".thumb-box");
      const img = card.querySelector(".thumb");
      if (file.type.startsWith("image/")) {
        const url = URL.createObjectURL(file);
        state.objectUrls.push(url);
        img.alt = `thumbnail of ${name}`;
        img.addEventListener("error", () => {
          img.hidden = true; // a format this browser cannot show (the server may still read it)
          box.classList.add("no-preview");
        });
        img.src = url;
      } else {
        img.hidden = true;
        box.classList.add("no-preview");
      }
      el.results.append(card);
      return card;
    });
  }

  function fillCard(card, prediction, body, ms) {
    const rows = prediction.top_k.map((score) => {
      const row = el.rowTemplate.content.firstElementChild.cloneNode(true);
      const percent = `${(score.probability * 100).toFixed(1)}%`;
      row.querySelector(".label").textContent = score.label;
      row.querySelector(".label").title = score.label;
      row.querySelector(".probability").textContent = percent;
      row.querySelector(".fill").style.width = `${(score.probability * 100).toFixed(2)}%`;
      row.dataset.index = String(score.index);
      return row;
    });
    card.querySelector(".bars").replaceChildren(...rows);
    card.explanation = prediction.explanation || null;
    card.shownMap = 0;
    if (card.explanation) offerMaps(card, rows);
    showOverlay(card);
    card.querySelector(".status").hidden = true;
    const meta = card.querySelector(".meta");
    meta.querySelector('[data-testid="model-name"]').textContent = body.model;
    meta.querySelector('[data-testid="model-version"]').textContent = body.model_version;
    meta.querySelector('[data-testid="latency-ms"]').textContent = String(Math.round(ms));
    meta.hidden = false;
    card.dataset.state = "done";
  }

  // ---- explanations: the class activation map over the photo ---------------------------------

  // The classes that have a map are clickable: their map replaces the top class's.
  function offerMaps(card, rows) {
    const mapped = new Map(card.explanation.maps.map((m, i) => [m.index, i]));
    for (const row of rows) {
      const position = mapped.get(Number(row.dataset.index));
      if (position === undefined) continue;
      row.classList.add("has-map");
      row.title = `${row.title || row.querySelector(".label").textContent}: click to see where the model saw it`;
      row.addEventListener("click", () => {
        card.shownMap = position;
        showOverlay(card);
      });
    }
  }

  // Jet, the colour scale CAM figures use, between its bright ends: blue (0), green, red (1);
  // the hotter, the more opaque. The client's overlay images use the same scale.
  function heatColour(value) {
    const v = 0.125 + 0.75 * value;
    const channel = (centre) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * v - centre))));
    return [channel(3), channel(2), channel(1), Math.round(255 * (0.2 + 0.5 * value))];
  }

  function heatImage(heatmap) {
    const rows = heatmap.length;
    const cols = heatmap[0].length;
    const small = document.createElement("canvas");
    small.width = cols;
    small.height = rows;
    const context = small.getContext("2d");
    const pixels = context.createImageData(cols, rows);
    heatmap.forEach((line, y) => line.forEach((value, x) => {
      pixels.data.set(heatColour(Math.min(1, Math.max(0, value))), 4 * (y * cols + x));
    }));
    context.putImageData(pixels, 0, 0);
    return small;
  }

  function showOverlay(card) {
    const canvas = card.querySelector(".cam");
    const caption = card.querySelector(".cam-caption");
    const img = card.querySelector(".thumb");
    const explanation = card.explanation;
    const on = el.explain.checked && Boolean(explanation) && explanation.maps.length > 0;
    canvas.hidden = !on || img.hidden;
    caption.hidden = !on;
    for (const row of card.querySelectorAll(".row")) row.classList.remove("shown-map");
    if (!on) return;
    const map = explanation.maps[card.shownMap] || explanation.maps[0];
    caption.textContent = `Where the model saw “${map.label}” (${explanation.method.toUpperCase()}); the frame is the part it was shown.`;
    const row = card.querySelector(`.row[data-index="${map.index}"]`);
    if (row) row.classList.add("shown-map");
    if (img.hidden) return;
    if (!img.complete || !img.naturalWidth) {
      img.addEventListener("load", () => showOverlay(card), { once: true });
      return;
    }
    drawMap(canvas, img, explanation.box, map);
  }

  // The map covers the crop the model saw, in the original's pixels: scale that box to the
  // thumbnail as shown and let the canvas smooth the small grid over it.
  function drawMap(canvas, img, box, map) {
    const ratio = window.devicePixelRatio || 1;
    canvas.style.left = `${img.offsetLeft}px`;
    canvas.style.top = `${img.offsetTop}px`;
    canvas.style.width = `${img.clientWidth}px`;
    canvas.style.height = `${img.clientHeight}px`;
    canvas.width = Math.max(1, Math.round(img.clientWidth * ratio));
    canvas.height = Math.max(1, Math.round(img.clientHeight * ratio));
    const sx = canvas.width / img.naturalWidth;
    const sy = canvas.height / img.naturalHeight;
    const context = canvas.getContext("2d");
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";
    const [x, y, w, h] = [box.left * sx, box.top * sy, box.width * sx, box.height * sy];
    context.drawImage(heatImage(map.heatmap), x, y, w, h);
    context.setLineDash([4 * ratio, 3 * ratio]);
    context.lineWidth = ratio;
    context.strokeStyle = "rgba(255, 255, 255, 0.9)";
    context.strokeRect(x, y, w, h);
    canvas.dataset.label = map.label;
  }

  function refreshOverlays() {
    for (const card of el.results.querySelectorAll(".card")) showOverlay(card);
  }

  function failCards(cards, text) {
    for (const card of cards) {
      card.classList.add("failed");
      card.dataset.state = "failed";
      card.querySelector(".status").textContent = text;
    }
  }

  // ---- inputs: picker, drop, paste, camera ----------------------------------------------

  function openPicker() {
    el.fileInput.click();
  }

  el.dropzone.addEventListener("click", openPicker);
  el.dropzone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      openPicker();
    }
  });
  el.fileInput.addEventListener("change", () => {
    const files = Array.from(el.fileInput.files || []);
    el.fileInput.value = ""; // the same file chosen again is a new change
    classify(files);
  });

  const carriesFiles = (event) =>
    Boolean(event.dataTransfer) && Array.from(event.dataTransfer.types || []).includes("Files");
  let dragDepth = 0;
  document.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth += 1;
    el.dropzone.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) el.dropzone.classList.remove("dragging");
  });
  document.addEventListener("dragover", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    event.preventDefault(); // else the browser opens the file instead of letting the page have it
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    event.preventDefault();
    dragDepth = 0;
    el.dropzone.classList.remove("dragging");
    const files = Array.from((event.dataTransfer && event.dataTransfer.files) || []);
    if (!files.length) {
      showMessage("error", "Nothing to classify",
        "drop image files. A picture dragged from another web page arrives as a link, which this page cannot read: save it first.");
      return;
    }
    classify(files);
  });

  document.addEventListener("paste", (event) => {
    const files = Array.from((event.clipboardData && event.clipboardData.files) || []);
    if (!files.length) return; // text goes where it was pasted (the key field)
    event.preventDefault();
    classify(files);
  });

  el.topK.addEventListener("change", () => {
    state.topKTouched = true;
    topK();
    if (state.lastFiles.length) classify(state.lastFiles);
  });

  el.explain.addEventListener("change", () => {
    const cards = Array.from(el.results.querySelectorAll(".card"));
    const missing = cards.some((card) => card.dataset.state === "done" && !card.explanation);
    if (el.explain.checked && missing && state.lastFiles.length) classify(state.lastFiles);
    else refreshOverlays();
  });
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(refreshOverlays, 100);
  });

  el.keyApply.addEventListener("click", applyKey);
  el.keyInput.addEventListener("keydown", (event) => {
    if (event.key === "Enter") applyKey();
  });

  // getUserMedia exists only in secure contexts (https, localhost) of browsers with a camera API.
  const cameraOffered = Boolean(navigator.mediaDevices && typeof navigator.mediaDevices.getUserMedia === "function");
  el.cameraButton.hidden = !cameraOffered;

  async function openCamera() {
    if (state.stream) return;
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    } catch (err) {
      showMessage("error", "Camera unavailable", `${err.name}: ${err.message}`);
      return;
    }
    el.cameraVideo.srcObject = state.stream;
    el.camera.hidden = false;
    el.cameraSnap.focus();
  }

  function closeCamera() {
    if (state.stream) for (const track of state.stream.getTracks()) track.stop();
    state.stream = null;
    el.cameraVideo.srcObject = null;
    el.camera.hidden = true;
    el.cameraButton.focus();
  }

  function snap() {
    const video = el.cameraVideo;
    if (!video.videoWidth) {
      showMessage("error", "Camera not ready", "no picture yet; try again in a moment.");
      return;
    }
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob((blob) => {
      if (!blob) {
        showMessage("error", "Camera", "the snapshot could not be encoded.");
        return;
      }
      const stamp = new Date().toISOString().replace(/[:.]/g, "-");
      classify([new File([blob], `camera-${stamp}.jpg`, { type: "image/jpeg" })]);
    }, "image/jpeg", 0.92);
  }

  el.cameraButton.addEventListener("click", openCamera);
  el.cameraClose.addEventListener("click", closeCamera);
  el.cameraSnap.addEventListener("click", snap);

  state.modelLoad = loadModel();
})();
