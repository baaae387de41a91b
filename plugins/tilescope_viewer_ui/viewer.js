// tilescope results viewer: one <canvas> (image, region grid, boxes), polled JSON.
// State for people and tests alike lives in window.tilescopeViewer and data-* attributes.
// A batch run (many images in one run) lists its images and its work units' live states;
// picking a stored image draws that image's grid and boxes from its result.json.
// A one-image run may map analyze over work units (several regions a task): states and
// tries are per task (map index), and each region of /plan names its task.
(() => {
  "use strict";
  const cfg = JSON.parse(document.getElementById("viewer-config").textContent);
  const POLL_MS = 2000;
  const IMAGE_SIDE = 1600;
  const LABELS_UP_TO = 600; // past this many visible boxes, labels only clutter the canvas
  // Airflow's own state colours, so the grid reads like the Grid view.
  const COLORS = {
    none: "#9e9e9e", scheduled: "#d2b48c", queued: "#808080", running: "#32cd32",
    success: "#008000", failed: "#ff0000", up_for_retry: "#ffd700",
    upstream_failed: "#ffa500", skipped: "#ff69b4", removed: "#d3d3d3",
    deferred: "#9370db", restarting: "#ee82ee", up_for_reschedule: "#40e0d0",
  };
  const S = (window.tilescopeViewer = {
    ready: false, mode: "waiting", runState: null, regions: 0, tasks: 0, cellsDrawn: 0,
    boxesDrawn: 0, boxesTotal: 0, labelsDrawn: 0, imageLoaded: false, stateCounts: {},
    classCounts: {}, findings: 0, polls: 0, errors: [], selected: null, draws: 0,
    lastDrawMs: null, lastPollMs: null,
    batch: false, images: 0, imagesFinal: false, units: 0, unitStateCounts: {},
    selectedImage: null, pointer: null, evaluation: null,
  });
  const $ = (id) => document.getElementById(id);
  const canvas = $("view");
  const ctx = canvas.getContext("2d");
  let plan = null; // {image, grid, regions (each with its task), tasks, category_names}
  let states = [], tries = []; // per region, from its task's
  let taskStates = [], taskTries = []; // per analyze instance (map index), from /states
  let stages = {};
  let image = null;
  let imageRequested = false;
  let cursor = null;
  const regionBoxes = new Map(); // map index → {boxes, scores, classes}
  const regionInfo = new Map(); // map index → finding summary (attempts, seconds, count)
  let final = null; // merged result once stored
  let finalAtEnd = false; // read after the run ended (so with evaluate's output, if any)
  const hidden = new Set(); // class ids switched off
  let minScore = 0;
  let scale = 1;
  let drawQueued = false;
  // batch runs
  let batchPlan = null; // {batch, units} from /plan
  let unitStates = [];
  let listing = null; // {final, images, counts} from /images
  let listedAtEnd = false;
  let picked = null; // the batch image shown
  let imageQuery = ""; // "image=N&" for a batch image
  const unitItems = [];

  const names = () => (final ? final.category_names : (plan && plan.category_names) || []);
  const className = (c) => names()[c] ?? String(c);
  const classColor = (c) => `hsl(${(c * 137.508) % 360} 90% 55%)`;

  async function getJSON(path) {
    const response = await fetch(cfg.api + path, { credentials: "same-origin",
      headers: { Accept: "application/json" } });
    if (response.status === 401 || response.status === 403) {
      throw new Error("not signed in (any more): reload the page to log in");
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const err = new Error(body.detail || `HTTP ${response.status}`);
      err.status = response.status;
      throw err;
    }
    return response.json();
  }

  function say(text) { $("message").textContent = text || ""; }

  function layout() {
    const img = plan && plan.image;
    if (!img || !img.width) return;
    const width = Math.max(200, Math.floor(canvas.parentElement.clientWidth || 960));
    const maxHeight = Math.max(240, window.innerHeight - 140);
    scale = Math.min(width / img.width, maxHeight / img.height);
    const w = Math.round(img.width * scale), h = Math.round(img.height * scale);
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  }

  function visibleDetections() {
    const out = [];
    const push = (d) => {
      for (let i = 0; i < d.boxes.length; i++) {
        if (d.scores[i] >= minScore && !hidden.has(d.classes[i])) {
          out.push([d.boxes[i], d.scores[i], d.classes[i]]);
        }
      }
    };
    if (final) push(final); else regionBoxes.forEach(push);
    return out;
  }

  function allDetections() {
    if (final) return final;
    const all = { boxes: [], scores: [], classes: [] };
    regionBoxes.forEach((d) => {
      all.boxes.push(...d.boxes); all.scores.push(...d.scores); all.classes.push(...d.classes);
    });
    return all;
  }

  function draw() {
    drawQueued = false;
    const started = performance.now();
    layout();
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (image) ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    else { ctx.fillStyle = "#222"; ctx.fillRect(0, 0, canvas.width, canvas.height); }
    let cells = 0;
    const regions = (plan && plan.regions) || [];
    ctx.lineWidth = 1;
    ctx.font = "11px system-ui, sans-serif";
    // Small cells (hundreds of regions) get fainter outlines so the picture stays readable.
    const small = regions.length && (regions[0].box[2] - regions[0].box[0]) * scale < 32;
    for (const r of regions) {
      const state = states[r.index] || "none";
      const [x0, y0, x1, y1] = r.box.map((v) => v * scale);
      const color = COLORS[state] || COLORS.none;
      const pending = state === "none" || state === "scheduled";
      ctx.globalAlpha = state === "success" ? 0.10 : pending ? 0.16 : 0.32;
      ctx.fillStyle = color;
      ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
      ctx.globalAlpha = small && (pending || state === "success") ? 0.35 : 0.9;
      ctx.strokeStyle = color;
      ctx.strokeRect(Math.round(x0) + 0.5, Math.round(y0) + 0.5, Math.round(x1 - x0) - 1,
        Math.round(y1 - y0) - 1);
      if (x1 - x0 > 48 && y1 - y0 > 16) {
        ctx.fillStyle = color;
        ctx.fillText(r.name, x0 + 3, y0 + 12);
      }
      cells++;
    }
    ctx.globalAlpha = 1;
    const dets = visibleDetections();
    const withLabels = dets.length <= LABELS_UP_TO;
    let labels = 0;
    ctx.lineWidth = 2;
    for (const [box, score, cls] of dets) {
      const x = box[0] * scale, y = box[1] * scale;
      const w = (box[2] - box[0]) * scale, h = (box[3] - box[1]) * scale;
      const color = classColor(cls);
      ctx.strokeStyle = color;
      ctx.strokeRect(x, y, w, h);
      if (withLabels) {
        const text = `${className(cls)} ${score.toFixed(2)}`;
        const tw = ctx.measureText(text).width + 6;
        ctx.fillStyle = color;
        ctx.fillRect(x - 1, Math.max(0, y - 14), tw, 14);
        ctx.fillStyle = "#000";
        ctx.fillText(text, x + 2, Math.max(11, y - 3));
        labels++;
      }
    }
    if (S.selected !== null && regions[S.selected]) {
      const [x0, y0, x1, y1] = regions[S.selected].box.map((v) => v * scale);
      ctx.lineWidth = 3;
      ctx.strokeStyle = "#fff";
      ctx.strokeRect(x0 + 1.5, y0 + 1.5, x1 - x0 - 3, y1 - y0 - 3);
    }
    S.cellsDrawn = cells;
    S.boxesDrawn = dets.length;
    S.labelsDrawn = labels;
    S.draws++;
    S.lastDrawMs = Math.round((performance.now() - started) * 10) / 10;
    canvas.dataset.cellsDrawn = String(cells);
    canvas.dataset.boxesDrawn = String(dets.length);
    canvas.dataset.mode = S.mode;
  }

  function redraw() {
    if (!drawQueued) { drawQueued = true; requestAnimationFrame(draw); }
  }

  function countStates(list) {
    const counts = {};
    for (const s of list) counts[s] = (counts[s] || 0) + 1;
    return counts;
  }

  function renderLegend() {
    const counts = countStates(states);
    S.stateCounts = counts;
    $("legend").replaceChildren(...Object.entries(counts).sort().map(([state, n]) => {
      const li = document.createElement("li");
      li.dataset.state = state;
      const swatch = document.createElement("i");
      swatch.style.background = COLORS[state] || COLORS.none;
      li.append(swatch, `${state.replaceAll("_", " ")}: ${n}`);
      return li;
    }));
    // analyze's instances: a single-image run's regions or units, a batch's units
    const mapped = S.batch ? unitStates : taskStates;
    const mappedCounts = countStates(mapped);
    const order = ["preprocess", "analyze", "synthesize", "store", "finalize"];
    $("stages").replaceChildren(...order.map((task) => {
      const li = document.createElement("li");
      let state = stages[task] || "none";
      let label = task;
      if (task === "analyze") {
        const done = mappedCounts.success || 0;
        label = `analyze ${done}/${mapped.length}`;
        state = mappedCounts.failed ? "failed" : done === mapped.length && done ? "success"
          : (mappedCounts.running || mappedCounts.queued) ? "running" : "none";
      }
      li.textContent = label;
      li.style.borderLeftColor = COLORS[state] || COLORS.none;
      li.dataset.state = state;
      return li;
    }));
  }

  function renderClasses() {
    const all = allDetections();
    const total = {}, shown = {};
    all.classes.forEach((c, i) => {
      total[c] = (total[c] || 0) + 1;
      if (all.scores[i] >= minScore && !hidden.has(c)) shown[c] = (shown[c] || 0) + 1;
    });
    S.boxesTotal = all.classes.length;
    S.classCounts = Object.fromEntries(Object.entries(total).map(([c, n]) => [className(+c), n]));
    const rows = Object.keys(total).map(Number).sort((a, b) => total[b] - total[a]);
    $("classes").tBodies[0].replaceChildren(...rows.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.class = className(c);
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = !hidden.has(c);
      box.addEventListener("change", () => {
        if (box.checked) hidden.delete(c); else hidden.add(c);
        renderClasses(); redraw();
      });
      const swatch = document.createElement("i");
      swatch.style.background = classColor(c);
      const cells = [box, [swatch, " ", className(c)], String(shown[c] || 0), String(total[c])];
      tr.append(...cells.map((content) => {
        const td = document.createElement("td");
        td.append(...[].concat(content));
        return td;
      }));
      return tr;
    }));
  }

  function showRegion(index) {
    const regions = (plan && plan.regions) || [];
    const r = regions[index];
    if (!r) return;
    S.selected = index;
    const info = regionInfo.get(index) || {};
    const boxes = final ? null : regionBoxes.get(index);
    // no task for a batch image's regions (they ran inside units) or an unclaimed one
    const task = S.batch || !(r.task >= 0) ? null : r.task;
    const details = {
      state: states[index] || "none", task: task ?? "–",
      "try": task === null ? "–" : tries[index] || "–",
      box: r.box.join(", "), slices: r.slices,
      detections: boxes ? boxes.boxes.length : info.count ?? "–",
      seconds: info.seconds && info.seconds.total !== undefined
        ? info.seconds.total.toFixed(2) : "–",
    };
    $("region-name").textContent = r.name;
    $("region-details").replaceChildren(...Object.entries(details).flatMap(([k, v]) => {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(v);
      return [dt, dd];
    }));
    const link = $("region-log");
    // the log of the analyze instance that ran the region (its unit's, when units are mapped)
    link.href = cfg.log_prefix + task + (tries[index] ? `?try_number=${tries[index]}` : "");
    link.dataset.region = String(index);
    link.dataset.task = String(task);
    link.hidden = task === null;
    $("region-info").hidden = false;
    redraw();
  }

  // Inside Airflow's UI the viewer is a same-origin iframe that may not navigate the top
  // window itself; asking the UI's router (history + popstate) opens the log page there.
  $("region-log").addEventListener("click", (event) => {
    try {
      if (window.parent === window || !window.parent.document.getElementById("root")) return;
      const url = new URL(event.currentTarget.href, window.location.href);
      window.parent.history.pushState({}, "", url.pathname + url.search);
      window.parent.dispatchEvent(new PopStateEvent("popstate", { state: {} }));
      event.preventDefault();
    } catch (err) { /* not embedded, or another origin: follow the link normally */ }
  });

  canvas.addEventListener("click", (event) => {
    if (!plan || !plan.regions.length) return;
    const rect = canvas.getBoundingClientRect();
    const x = ((event.clientX - rect.left) * canvas.width) / rect.width / scale;
    const y = ((event.clientY - rect.top) * canvas.height) / rect.height / scale;
    // Regions overlap by the slice overlap: take the one whose centre is nearest.
    let best = null, bestDist = Infinity;
    for (const r of plan.regions) {
      const [x0, y0, x1, y1] = r.box;
      if (x < x0 || x > x1 || y < y0 || y > y1) continue;
      const d = (x - (x0 + x1) / 2) ** 2 + (y - (y0 + y1) / 2) ** 2;
      if (d < bestDist) { bestDist = d; best = r.index; }
    }
    if (best !== null) showRegion(best);
  });

  // Georeferenced results: lon/lat under the pointer, interpolated bilinearly between the
  // server's WGS 84 control points (shaping.georef_payload; tilescope.georef.interpolate_lonlat
  // is the same arithmetic, tested against PROJ), quoted with their measured error.
  function lonlatAt(grid, col, row) {
    const find = (axis, v) => {
      let i = 0;
      while (i < axis.length - 2 && v >= axis[i + 1]) i++;
      return i;
    };
    const i = find(grid.cols, col), j = find(grid.rows, row);
    const u = (col - grid.cols[i]) / (grid.cols[i + 1] - grid.cols[i]);
    const v = (row - grid.rows[j]) / (grid.rows[j + 1] - grid.rows[j]);
    const bilinear = (z) => (z[j][i] * (1 - u) + z[j][i + 1] * u) * (1 - v) +
      (z[j + 1][i] * (1 - u) + z[j + 1][i + 1] * u) * v;
    return [bilinear(grid.lon), bilinear(grid.lat)];
  }

  // Whole-slide scans: µm from the slide's top-left corner under the pointer, from its
  // microns per level-0 pixel (shaping.microscopy_payload); boxes are in level-0 pixels.
  function micronsAt(scan, col, row) {
    return [col * scan.mpp[0], row * scan.mpp[1]];
  }

  function micronsLine(scan, col, row) {
    const [x, y] = micronsAt(scan, col, row);
    const power = scan.objective_power ? `, ${scan.objective_power}× scan` : "";
    const level = scan.level ? ` analysed at level ${scan.level}` +
      (scan.level_magnification ? ` (${scan.level_magnification.toFixed(1)}×)` : "") : "";
    return `x ${col.toFixed(1)}, y ${row.toFixed(1)} px · ` +
      `${x.toFixed(1)} µm, ${y.toFixed(1)} µm (${scan.mpp[0]} µm/px${power}${level})`;
  }

  function showPointer(event) {
    const geo = final && final.georef;
    const scan = final && final.microscopy;
    const line = $("pointer");
    const placed = geo && geo.lonlat;
    const measured = scan && scan.mpp;
    if (!(placed || measured) || !plan || !plan.image) {
      line.hidden = true; S.pointer = null; return;
    }
    const rect = canvas.getBoundingClientRect();
    const col = ((event.clientX - rect.left) * canvas.width) / rect.width / scale;
    const row = ((event.clientY - rect.top) * canvas.height) / rect.height / scale;
    if (col < 0 || row < 0 || col > plan.image.width || row > plan.image.height) {
      line.hidden = true; return;
    }
    if (!placed) {
      const [um_x, um_y] = micronsAt(scan, col, row);
      S.pointer = { col, row, um_x, um_y };
      line.textContent = micronsLine(scan, col, row);
      line.hidden = false;
      return;
    }
    const [lon, lat] = lonlatAt(geo.lonlat, col, row);
    const err = geo.lonlat.max_error_deg;
    // digits down to the interpolation's error (at most 7: ~1 cm)
    const digits = Math.min(7, Math.max(4, Math.ceil(-Math.log10(Math.max(err, 1e-9))) + 1));
    S.pointer = { col, row, lon, lat };
    line.textContent = `x ${col.toFixed(1)}, y ${row.toFixed(1)} px · ` +
      `lon ${lon.toFixed(digits)}°, lat ${lat.toFixed(digits)}° (WGS 84, ±${err.toPrecision(2)}°)` +
      ` · ${geo.crs && geo.crs.length < 40 ? geo.crs : "native CRS"}`;
    line.hidden = false;
  }
  canvas.addEventListener("mousemove", showPointer);
  canvas.addEventListener("mouseleave", () => { $("pointer").hidden = true; });

  $("min-score").addEventListener("input", (event) => {
    minScore = Number(event.target.value);
    $("min-score-value").textContent = minScore.toFixed(2);
    renderClasses(); redraw();
  });
  $("all-classes").addEventListener("click", () => { hidden.clear(); renderClasses(); redraw(); });
  $("no-classes").addEventListener("click", () => {
    allDetections().classes.forEach((c) => hidden.add(c)); renderClasses(); redraw();
  });
  window.addEventListener("resize", redraw);

  function loadImage() {
    if (imageRequested || !plan || !plan.image) return;
    imageRequested = true;
    const img = new Image();
    const query = imageQuery;
    img.onload = () => {
      if (query !== imageQuery) return; // another batch image was picked meanwhile
      image = img; S.imageLoaded = true; redraw();
    };
    img.onerror = () => { if (query === imageQuery) imageRequested = false; }; // retry later
    img.src = `${cfg.api}/image?${query}side=${IMAGE_SIDE}`;
  }

  function renderArtifacts(artifacts) {
    $("artifact-links").replaceChildren(...Object.entries(artifacts || {}).map(([name, key]) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = `${cfg.api}/object?key=${encodeURIComponent(key)}`;
      a.textContent = name;
      li.append(a);
      return li;
    }));
    $("artifacts").hidden = !artifacts;
  }

  // evaluation.json's figures as the page lists them (what the file holds, this order)
  const EVALUATION_FIGURES = [["AP50", "AP50"], ["recall50", "recall @ IoU 0.5"],
    ["precision50", "precision @ IoU 0.5"], ["AP", "AP 0.5:0.95"], ["AP75", "AP75"],
    ["APs", "AP small"], ["APm", "AP medium"], ["APl", "AP large"],
    ["dup_rate", "duplicates"]];

  function renderEvaluation(ev) {
    // A run the evaluate step scored (ground truth given or beside the image): its figures
    // and PR plot; anything else shows nothing.
    S.evaluation = ev ? ev.figures : null;
    $("evaluation").hidden = !ev;
    const plot = $("evaluation-plot");
    if (!ev) { plot.hidden = true; plot.removeAttribute("src"); return; }
    const shown = EVALUATION_FIGURES.filter(([name]) => name in ev.figures);
    $("evaluation-figures").replaceChildren(...shown.flatMap(([name, label]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      const value = ev.figures[name];
      dt.textContent = label;
      dd.textContent = value === null ? "–" : value.toFixed(3);
      dd.dataset.figure = name;
      return [dt, dd];
    }));
    const counts = ev.counts || {};
    $("evaluation-counts").textContent = "objects" in counts
      ? `${counts.objects} objects · ${counts.detections} detections` : "";
    $("evaluation-truth").textContent = ev.ground_truth ? `ground truth: ${ev.ground_truth}` : "";
    plot.hidden = !ev.pr_plot;
    plot.onerror = () => { plot.hidden = true; }; // figures stay; the plot is optional
    if (ev.pr_plot) plot.src = `${cfg.api}/object?key=${encodeURIComponent(ev.pr_plot)}`;
  }

  // ---- batch runs ---------------------------------------------------------------------
  function renderUnits() {
    const units = (batchPlan && batchPlan.units) || [];
    const list = $("units");
    while (unitItems.length < units.length) {
      const u = units[unitItems.length];
      const li = document.createElement("li");
      li.dataset.index = String(u.index);
      li.title = `${u.slices} slices`;
      li.textContent = u.name;
      unitItems.push(li);
      list.append(li);
    }
    units.forEach((u, i) => {
      const state = unitStates[u.index] || "none";
      const li = unitItems[i];
      if (li.dataset.state !== state) {
        li.dataset.state = state;
        li.style.borderLeftColor = COLORS[state] || COLORS.none;
        li.title = `${state.replaceAll("_", " ")} · ${u.slices} slices`;
      }
    });
    const counts = countStates(unitStates);
    S.unitStateCounts = counts;
    $("units-summary").textContent = Object.entries(counts).sort()
      .map(([state, n]) => `${state.replaceAll("_", " ")} ${n}`).join(" · ");
    $("units-box").hidden = !units.length;
  }

  function renderImages() {
    const rows = listing ? listing.images : [];
    S.images = rows.length;
    S.imagesFinal = Boolean(listing && listing.final);
    $("images-summary").textContent = listing ? Object.entries(listing.counts).sort()
      .map(([status, n]) => `${status} ${n}`).join(" · ") : "";
    $("images").tBodies[0].replaceChildren(...rows.map((row) => {
      const tr = document.createElement("tr");
      tr.dataset.index = String(row.index);
      tr.dataset.status = row.status;
      tr.dataset.viewable = String(row.viewable);
      if (row.index === picked) tr.classList.add("picked");
      const name = document.createElement("td");
      name.append(row.name);
      if (row.error) {
        const err = document.createElement("span");
        err.className = "error";
        err.textContent = row.error_class ? `${row.error_class}: ${row.error}` : row.error;
        name.append(err);
      }
      const status = document.createElement("td");
      status.textContent = row.result_status && row.result_status !== "complete"
        ? `${row.status} (${row.result_status})` : row.status;
      const boxes = document.createElement("td");
      boxes.textContent = row.detections === null ? "–" : String(row.detections);
      tr.append(name, status, boxes);
      if (row.viewable) tr.addEventListener("click", () => pickImage(row.index));
      return tr;
    }));
    $("images-box").hidden = false;
  }

  async function pickImage(index) {
    picked = index;
    S.selectedImage = index;
    for (const tr of $("images").tBodies[0].rows) {
      tr.classList.toggle("picked", tr.dataset.index === String(index));
    }
    try {
      const doc = await getJSON(`/result?image=${index}`);
      if (picked !== index) return; // another image was picked meanwhile
      plan = { image: doc.image, grid: doc.grid, regions: doc.regions,
        category_names: doc.category_names };
      states = doc.region_states; tries = [];
      final = doc;
      S.mode = "final"; S.regions = doc.regions.length; S.selected = null;
      $("region-info").hidden = true;
      hidden.clear();
      image = null; S.imageLoaded = false; imageRequested = false;
      imageQuery = `image=${index}&`;
      loadImage();
      $("summary").textContent = `${doc.image && doc.image.uri ? doc.image.uri + " · " : ""}` +
        `${doc.status}: ${doc.description || ""}`;
      renderArtifacts(doc.artifacts);
      renderEvaluation(doc.evaluation);
      renderLegend(); renderClasses(); redraw();
      say("");
    } catch (err) {
      S.errors.push(String(err.message || err));
      say(String(err.message || err));
    }
  }

  async function pollBatch(started, planned = false) {
    if (!planned && (!batchPlan || !batchPlan.units.length)) batchPlan = await getJSON("/plan");
    if (!S.units && batchPlan.units.length) {
      S.units = batchPlan.units.length;
      if (picked === null) say("pick a stored image in the list to see its grid and boxes");
    } else if (!S.units) say("waiting for preprocess to plan the batch…");
    const st = await getJSON(`/states?regions=${S.units}`);
    unitStates = st.states; stages = st.stages;
    S.runState = st.run_state;
    $("run-state").textContent = st.run_state;
    $("run-state").style.background = COLORS[st.run_state] || "";
    // The image list: once planned, then once more when store wrote the outcomes (or the
    // run ended without them) — not on every poll.
    const ended = st.result_ready || st.terminal;
    if (S.units && (!listing || (ended && !listing.final && !listedAtEnd))) {
      listedAtEnd = ended;
      listing = await getJSON("/images");
      renderImages();
      const wanted = cfg.image !== null ? cfg.image
        : listing.images.length === 1 ? listing.images[0].index : null;
      const row = listing.images.find((r) => r.index === wanted && r.viewable);
      if (picked === null && row) await pickImage(row.index);
    }
    renderUnits();
    renderLegend();
    if (S.selected !== null) showRegion(S.selected);
    const done = st.terminal && (listedAtEnd || !S.units);
    if (st.terminal && !S.units) say(`run ${st.run_state}; the batch was never planned`);
    S.ready = Boolean(S.units);
    document.body.dataset.state = done ? "done" : "live";
    S.lastPollMs = Math.round(performance.now() - started);
    if (!done) setTimeout(poll, POLL_MS);
  }

  async function poll() {
    S.polls++;
    const started = performance.now();
    try {
      if (S.batch) { await pollBatch(started); return; }
      if (!plan || !plan.regions.length) {
        plan = await getJSON("/plan");
        if (plan.mode === "batch") {
          S.batch = true; S.mode = "batch"; batchPlan = plan; plan = null;
          await pollBatch(started, true);
          return;
        }
        S.regions = plan.regions.length;
        S.tasks = plan.tasks ?? S.regions;
        states = new Array(S.regions).fill("none");
        if (!plan.regions.length) say("waiting for preprocess to plan the regions…");
      }
      loadImage();
      const st = await getJSON(`/states?regions=${S.tasks}`);
      taskStates = st.states; taskTries = st.tries; stages = st.stages;
      states = plan.regions.map((r) => taskStates[r.task] || "none");
      tries = plan.regions.map((r) => taskTries[r.task] || 0);
      S.runState = st.run_state;
      $("run-state").textContent = st.run_state;
      $("run-state").style.background = COLORS[st.run_state] || "";
      if (!final) {
        const since = cursor ? `?since=${encodeURIComponent(cursor)}` : "";
        const fresh = await getJSON(`/findings${since}`);
        cursor = fresh.cursor;
        for (const f of fresh.findings) {
          regionBoxes.set(f.index, f);
          regionInfo.set(f.index, f);
        }
        S.findings = regionBoxes.size;
        if (regionBoxes.size) S.mode = "live";
      }
      // evaluate runs after store: a result read while the run was live is read once
      // more at its end, for the evaluation written meanwhile
      if (st.result_ready && (!final || (st.terminal && !finalAtEnd))) {
        finalAtEnd = st.terminal;
        final = await getJSON("/result");
        S.mode = "final";
        $("summary").textContent = `${final.status}: ${final.description || ""}` +
          (final.total_seconds ? ` · ${final.total_seconds}s (model ${final.model_seconds}s)` : "");
        renderArtifacts(final.artifacts);
        renderEvaluation(final.evaluation);
      }
      renderLegend();
      renderClasses();
      if (S.selected !== null) showRegion(S.selected);
      else if (cfg.region !== null) {
        // ?region= comes from an analyze instance's tab: its map index, so the first
        // region that task runs (the region itself when analyze maps regions)
        const first = plan.regions.find((r) => r.task === cfg.region);
        if (first) showRegion(first.index);
      }
      redraw();
      const done = st.terminal && Boolean(final || !st.result_ready);
      if (st.terminal && !final && plan.regions.length) say(`run ${st.run_state}; no stored result`);
      else if (plan.regions.length) say("");
      S.ready = Boolean(plan.regions.length);
      document.body.dataset.state = done ? "done" : "live";
      S.lastPollMs = Math.round(performance.now() - started);
      if (!done) setTimeout(poll, POLL_MS);
    } catch (err) {
      S.errors.push(String(err.message || err));
      say(String(err.message || err));
      document.body.dataset.state = "error";
      if (err.status !== 400 && err.status !== 404) setTimeout(poll, POLL_MS * 2);
    }
  }

  $("run-id").textContent = `${cfg.dag_id} · ${cfg.run_id}`;
  poll();
})();
