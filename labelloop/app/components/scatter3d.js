// The 3D map: three.js points, orbit controls, a lasso that selects through depth, hover with thumbnail.
// Positions, ids and thumbnail names come once per map as static binary files (fetched by URL and
// cached by the browser); reruns send only colour codes, so recolouring 100k points is cheap.
// Streamlit calls this function again on every data change without cleaning up: the scene lives in
// `views`, keyed by the parent element, and only what changed is rebuilt.

const views = new Map();
const base = new URL("./", document.baseURI);
let threeModules = null;

function loadThree() {
  if (!threeModules) {
    threeModules = Promise.all([
      import(new URL("app/static/vendor/three/three.module.js", base).href),
      import(new URL("app/static/vendor/three/OrbitControls.js", base).href),
    ]);
  }
  return threeModules;
}

const VERTEX = `
attribute vec3 color;
attribute float shown;
attribute float picked;
uniform float size;
varying vec3 vColor;
varying float vPicked;
void main() {
  vColor = color;
  vPicked = picked;
  gl_Position = projectionMatrix * modelViewMatrix * vec4(position, 1.0);
  gl_PointSize = shown > 0.5 ? size * (picked > 0.5 ? 1.7 : 1.0) : 0.0;
}`;

const FRAGMENT = `
varying vec3 vColor;
varying float vPicked;
void main() {
  float r = length(gl_PointCoord - vec2(0.5));
  if (r > 0.5) discard;
  gl_FragColor = (vPicked > 0.5 && r > 0.32) ? vec4(1.0, 1.0, 1.0, 1.0) : vec4(vColor, 1.0);
}`;

function element(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (parent) parent.appendChild(node);
  return node;
}

function create(parentElement) {
  const root = element("div", "map-root", parentElement);
  const toolbar = element("div", "map-toolbar", root);
  const modeButton = element("button", "map-button", toolbar);
  modeButton.dataset.role = "mode";
  const clearButton = element("button", "map-button", toolbar);
  clearButton.textContent = "Clear selection";
  const resetButton = element("button", "map-button", toolbar);
  resetButton.textContent = "Reset view";
  const legendButton = element("button", "map-button active", toolbar);
  legendButton.textContent = "Legend";
  const stage = element("div", "map-stage", root);
  const overlay = element("canvas", "map-overlay", stage);
  const legend = element("div", "map-legend", stage);
  const status = element("span", "map-status", stage);  // on the map, not in the toolbar: one toolbar row in a narrow column
  const tooltip = element("div", "map-tooltip", stage);
  const tipImage = element("img", "", tooltip);
  const tipText = element("div", "", tooltip);
  tooltip.style.display = "none";
  const view = {
    root, toolbar, modeButton, clearButton, resetButton, legendButton, status, stage, overlay, legend, tooltip, tipImage, tipText,
    mode: "rotate", selected: new Set(), selectionToken: null, lastPushed: null, mapUrl: null, data: null,
    setStateValue: null, three: null, points: null, ids: null, thumbs: null, codes: null, palette: [], hidden: new Set(),
  };
  modeButton.onclick = () => setMode(view, view.mode === "rotate" ? "lasso" : "rotate");
  clearButton.onclick = () => { view.selected.clear(); applySelection(view); sendSelection(view, null); };
  resetButton.onclick = () => resetCamera(view);
  // The legend lets the pointer through; when the pointer is over it, it fades so the points under it
  // can be seen while hovering or drawing a lasso there.
  stage.addEventListener("pointermove", (event) => {
    const box = legend.getBoundingClientRect();
    const over = event.clientX >= box.left && event.clientX <= box.right && event.clientY >= box.top && event.clientY <= box.bottom;
    legend.classList.toggle("faded", over);
  });
  stage.addEventListener("pointerleave", () => legend.classList.remove("faded"));
  legendButton.onclick = () => {
    const shown = legend.style.display === "none";
    legend.style.display = shown ? "" : "none";
    legendButton.classList.toggle("active", shown);
  };
  // L and Escape work from the moment the page opens, not only once the map has focus (a user presses
  // L first, then draws). So they are heard on the document, but only while nothing that takes typing
  // has focus: an "l" typed into a label or commit message must stay in that field.
  const onKey = (event) => {
    if (!root.isConnected) {  // the page was left: Streamlit removed the map without telling us
      document.removeEventListener("keydown", onKey);
      if (views.get(parentElement) === view) views.delete(parentElement);
      return;
    }
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || takesTyping(event)) return;
    if (event.key === "l" || event.key === "L") {
      setMode(view, view.mode === "rotate" ? "lasso" : "rotate");
      event.preventDefault();
    } else if (event.key === "Escape" && view.mode === "lasso") {
      if (view.cancelLasso) view.cancelLasso();
      setMode(view, "rotate");
    }
  };
  document.addEventListener("keydown", onKey);
  setMode(view, "rotate");
  return view;
}

function takesTyping(event) {
  // The element the key goes to, also inside a shadow root (where event.target is only the host).
  const target = (event.composedPath && event.composedPath()[0]) || event.target;
  if (!target || !target.tagName) return false;
  if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  if (target.tagName === "INPUT") return !["checkbox", "radio", "button", "submit", "reset", "range", "color", "file"].includes(target.type);
  const role = target.getAttribute && target.getAttribute("role");
  return role === "textbox" || role === "combobox" || role === "searchbox";
}

function setMode(view, mode) {
  view.mode = mode;
  view.modeButton.textContent = mode === "lasso" ? "Lasso: on (L)" : "Lasso: off (L)";
  view.modeButton.classList.toggle("active", mode === "lasso");
  view.root.dataset.mode = mode;
  view.overlay.style.pointerEvents = mode === "lasso" ? "auto" : "none";
  if (view.controls) view.controls.enabled = mode !== "lasso";
}

async function buildScene(view, data) {
  const [THREE, { OrbitControls }] = await loadThree();
  view.THREE = THREE;
  const mapUrl = new URL(data.map_url, base).href;
  const [points, ids, thumbs] = await Promise.all(
    ["points.bin", "ids.bin", "thumbs.bin"].map((name) => fetch(mapUrl + name).then((r) => {
      if (!r.ok) throw new Error(`map file ${name}: HTTP ${r.status}`);
      return r.arrayBuffer();
    })),
  );
  view.points = new Float32Array(points);
  view.ids = new Int32Array(ids);
  view.thumbs = new Uint8Array(thumbs);
  const n = view.ids.length;

  if (!view.renderer) {
    view.renderer = new THREE.WebGLRenderer({ antialias: false, preserveDrawingBuffer: true });
    view.renderer.setPixelRatio(window.devicePixelRatio || 1);
    view.stage.insertBefore(view.renderer.domElement, view.overlay);
    view.scene = new THREE.Scene();
    view.scene.background = new THREE.Color(0x0e1117);
    view.camera = new THREE.PerspectiveCamera(50, 1, 0.01, 100);
    view.controls = new OrbitControls(view.camera, view.renderer.domElement);
    view.controls.enableDamping = false;
    view.controls.addEventListener("change", () => render(view));
    view.controls.addEventListener("end", () => saveCamera(view));
    attachLasso(view);
    attachHover(view);
    new ResizeObserver(() => resize(view)).observe(view.stage);
  }
  if (view.cloud) {
    view.scene.remove(view.cloud);
    view.cloud.geometry.dispose();
  }
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(view.points, 3));
  geometry.setAttribute("color", new THREE.BufferAttribute(new Float32Array(n * 3), 3));
  geometry.setAttribute("shown", new THREE.BufferAttribute(new Float32Array(n).fill(1), 1));
  geometry.setAttribute("picked", new THREE.BufferAttribute(new Float32Array(n), 1));
  const size = Math.max(2.5, 7 - 1.1 * Math.log10(Math.max(n, 10)));
  const material = new THREE.ShaderMaterial({ vertexShader: VERTEX, fragmentShader: FRAGMENT, uniforms: { size: { value: size * (window.devicePixelRatio || 1) } } });
  view.cloud = new THREE.Points(geometry, material);
  view.cloud.frustumCulled = false;
  view.scene.add(view.cloud);
  view.mapUrl = data.map_url;
  view.dims = data.dims;
  view.controls.enableRotate = data.dims === 3;
  view.codes = null;
  view.frame = framing(view.points, n);
  resize(view);  // first: the camera's aspect decides how far back a reset view stands
  if (!restoreCamera(view)) resetCamera(view);
}

function cameraKey(view) {
  return `labelloop-camera:${view.mapUrl}`;
}

function saveCamera(view) {
  const c = view.camera.position, t = view.controls.target;
  try {
    localStorage.setItem(cameraKey(view), JSON.stringify([c.x, c.y, c.z, t.x, t.y, t.z]));
  } catch (e) { /* storage full or blocked: the view just resets next time */ }
}

function restoreCamera(view) {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(cameraKey(view)) || "null"); } catch (e) { saved = null; }
  if (!Array.isArray(saved) || saved.length !== 6) return false;
  view.camera.position.set(saved[0], saved[1], saved[2]);
  view.controls.target.set(saved[3], saved[4], saved[5]);
  view.controls.update();
  return true;
}

function framing(points, n) {
  // Where the points lie, seen down the z axis: the middle and half-extents of the 0.5th..99.5th
  // percentiles of x and y (a few far stragglers must not shrink everything) and the depth in front.
  const step = Math.max(1, Math.floor(n / 20000));  // a sample is plenty to find percentiles
  const xs = [], ys = [], zs = [];
  for (let i = 0; i < n; i += step) { xs.push(points[3 * i]); ys.push(points[3 * i + 1]); zs.push(points[3 * i + 2]); }
  const range = (values) => {
    values.sort((a, b) => a - b);
    const at = (q) => values[Math.min(values.length - 1, Math.max(0, Math.round(q * (values.length - 1))))];
    return values.length ? [at(0.005), at(0.995)] : [-1, 1];
  };
  const [x0, x1] = range(xs), [y0, y1] = range(ys), [, z1] = range(zs);
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  return { cx, cy, hx: Math.max((x1 - x0) / 2, 0.05), hy: Math.max((y1 - y0) / 2, 0.05), front: Math.max(z1, 0) };
}

function resetCamera(view) {
  // The whole cloud in view and centred, whatever the map's shape: a map beside the selection panel
  // is narrower than tall, and then the width is what would cut clusters off.
  const f = view.frame || { cx: 0, cy: 0, hx: 1, hy: 1, front: 0 };
  const halfHeight = Math.tan((view.camera.fov * Math.PI) / 360), aspect = view.camera.aspect || 1;
  const distance = 1.08 * Math.max(f.hy / halfHeight, f.hx / (halfHeight * aspect));
  view.camera.position.set(f.cx, f.cy, f.front + distance);
  view.controls.target.set(f.cx, f.cy, 0);
  view.controls.update();
  saveCamera(view);
  render(view);
}

function resize(view) {
  const width = view.stage.clientWidth, height = view.stage.clientHeight;
  if (!width || !height) return;
  view.renderer.setSize(width, height);
  view.overlay.width = width;
  view.overlay.height = height;
  view.camera.aspect = width / height;
  view.camera.updateProjectionMatrix();
  render(view);
}

function render(view) {
  if (view.renderer) view.renderer.render(view.scene, view.camera);
}

function recolour(view, data) {
  const codes = data.codes.getChild("code").toArray();
  // The palette's hex colours are written to the frame buffer as they are (sRGB bytes / 255): the
  // shader is ours and does no colour management, so a THREE.Color (converted to linear light) would
  // draw every point darker than its legend swatch; #5c5f66 came out as #1b1d22 on the #0e1117 map.
  const palette = data.palette.map((entry) => srgb(entry.color));
  const hidden = new Set(data.hidden || []);
  const colours = view.cloud.geometry.getAttribute("color");
  const shown = view.cloud.geometry.getAttribute("shown");
  for (let i = 0; i < codes.length; i++) {
    const colour = palette[codes[i]] || palette[0];
    colours.array[3 * i] = colour[0];
    colours.array[3 * i + 1] = colour[1];
    colours.array[3 * i + 2] = colour[2];
    shown.array[i] = hidden.has(codes[i]) ? 0 : 1;
  }
  colours.needsUpdate = true;
  shown.needsUpdate = true;
  view.codes = codes;
  view.palette = data.palette;
  view.hidden = hidden;
  drawLegend(view);
  view.recolours = (view.recolours || 0) + 1;
  view.root.dataset.colours = String(view.recolours);  // tests and benchmarks wait on this
}

function srgb(hex) {
  const value = /^#[0-9a-f]{6}$/i.test(hex) ? parseInt(hex.slice(1), 16) : 0x808080;
  return [(value >> 16) / 255, ((value >> 8) & 255) / 255, (value & 255) / 255];
}

function drawLegend(view) {
  // One row per palette entry: swatch, name, count; hidden entries dimmed. Names are user text: textContent only.
  const legend = view.legend;
  legend.replaceChildren();
  const limit = 24;  // beyond this the list would cover the map; the Hide box lists them all
  view.palette.slice(0, limit).forEach((entry, code) => {
    const row = element("div", "map-legend-row", legend);
    if (view.hidden.has(code)) row.classList.add("hidden");
    const swatch = element("span", "map-legend-swatch", row);
    swatch.style.background = entry.color;
    const name = element("span", "map-legend-name", row);
    name.textContent = entry.name;
    name.title = entry.name;
    element("span", "map-legend-count", row).textContent = Number(entry.count || 0).toLocaleString();
  });
  if (view.palette.length > limit) element("div", "map-legend-more", legend).textContent = `+ ${view.palette.length - limit} more`;
  view.root.dataset.legend = String(Math.min(view.palette.length, limit));
}

function applySelection(view) {
  const picked = view.cloud.geometry.getAttribute("picked");
  picked.array.fill(0);
  for (const i of view.selected) picked.array[i] = 1;
  picked.needsUpdate = true;
  const total = view.total || view.ids.length;
  view.status.textContent = total > view.ids.length
    ? `${view.ids.length.toLocaleString()} of ${total.toLocaleString()} points drawn · ${view.selected.size.toLocaleString()} of them selected`
    : `${view.ids.length.toLocaleString()} points · ${view.selected.size.toLocaleString()} selected`;
  view.root.dataset.selected = String(view.selected.size);
  // The selected points themselves, for tests and automation: small selections only (a DOM attribute).
  view.root.dataset.selectedIndices = view.selected.size <= 20000 ? Array.from(view.selected).sort((a, b) => a - b).join(",") : "";
  render(view);
}

function sendSelection(view, releasedAt, lasso) {
  // The lasso itself goes too: on a map drawn as a subset the server selects among all points with it.
  const indices = Array.from(view.selected).sort((a, b) => a - b);
  view.lastPushed = `js-${Date.now()}-${Math.random()}`;
  view.setStateValue("selection", { token: view.lastPushed, indices, released_at: releasedAt, lasso: lasso || null });
}

function viewProjection(view) {
  return new view.THREE.Matrix4().multiplyMatrices(view.camera.projectionMatrix, view.camera.matrixWorldInverse);
}

function screenPositions(view) {
  // Every point projected with the current camera: NDC -> pixels; NaN for points behind the camera or hidden.
  // core/lasso.py repeats this arithmetic on the server: change both together.
  const e = viewProjection(view).elements, p = view.points, n = view.ids.length;
  const width = view.overlay.width, height = view.overlay.height;
  const out = new Float32Array(2 * n);
  for (let i = 0; i < n; i++) {
    const x = p[3 * i], y = p[3 * i + 1], z = p[3 * i + 2];
    const w = e[3] * x + e[7] * y + e[11] * z + e[15];
    if (w <= 0 || view.hidden.has(view.codes ? view.codes[i] : -1)) {
      out[2 * i] = NaN;
      out[2 * i + 1] = NaN;
      continue;
    }
    out[2 * i] = ((e[0] * x + e[4] * y + e[8] * z + e[12]) / w * 0.5 + 0.5) * width;
    out[2 * i + 1] = (1 - ((e[1] * x + e[5] * y + e[9] * z + e[13]) / w * 0.5 + 0.5)) * height;
  }
  return out;
}

function insidePolygon(x, y, polygon) {
  let inside = false;
  for (let i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
    const [xi, yi] = polygon[i], [xj, yj] = polygon[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function attachLasso(view) {
  // The overlay canvas only catches the pointer; the lasso line is an SVG polygon on top of it. (Drawn
  // on the canvas itself, the line sometimes stayed on screen after release in headless Chromium's
  // software GL, though the canvas had been cleared: an SVG element has no such flush to lose.)
  const canvas = view.overlay;
  const SVG = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "map-lasso");
  const outline = document.createElementNS(SVG, "polygon");
  svg.appendChild(outline);
  view.stage.insertBefore(svg, canvas.nextSibling);
  let polygon = null, operation = "replace";
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  };
  const draw = () => {
    const drawn = polygon && polygon.length >= 2;
    svg.style.display = drawn ? "block" : "none";
    svg.classList.toggle("subtract", operation === "subtract");
    outline.setAttribute("points", drawn ? polygon.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" ") : "");
  };
  view.cancelLasso = () => { polygon = null; draw(); };
  canvas.addEventListener("pointerdown", (event) => {
    if (view.mode !== "lasso") return;
    operation = event.shiftKey ? "add" : (event.altKey || event.ctrlKey || event.metaKey) ? "subtract" : "replace";
    polygon = [point(event)];
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!polygon) return;
    polygon.push(point(event));
    draw();
  });
  canvas.addEventListener("pointerup", (event) => {
    if (!polygon) return;  // nothing drawn, or Escape cancelled it
    const releasedAt = Date.now();
    const shape = polygon;
    polygon = null;
    draw();
    if (shape.length < 3) return;
    const screen = screenPositions(view);
    let minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity;
    for (const [x, y] of shape) { minX = Math.min(minX, x); maxX = Math.max(maxX, x); minY = Math.min(minY, y); maxY = Math.max(maxY, y); }
    const caught = [];
    for (let i = 0; i < view.ids.length; i++) {
      const x = screen[2 * i], y = screen[2 * i + 1];
      if (x >= minX && x <= maxX && y >= minY && y <= maxY && insidePolygon(x, y, shape)) caught.push(i);
    }
    if (operation === "replace") view.selected = new Set(caught);
    else if (operation === "add") for (const i of caught) view.selected.add(i);
    else for (const i of caught) view.selected.delete(i);
    applySelection(view);
    const lasso = { polygon: shape, matrix: Array.from(viewProjection(view).elements), width: view.overlay.width, height: view.overlay.height, operation };
    view.root.dataset.lasso = JSON.stringify(lasso);  // what the server repeats; tests compare the two
    sendSelection(view, releasedAt, lasso);
  });
}

function thumbName(view, i) {
  let hex = "";
  for (let b = 0; b < 8; b++) hex += view.thumbs[8 * i + b].toString(16).padStart(2, "0");
  return hex;
}

function attachHover(view) {
  const surface = view.renderer.domElement;
  let pending = null;
  const hide = () => { view.tooltip.style.display = "none"; view.root.dataset.hover = ""; };
  surface.addEventListener("pointerleave", hide);
  view.overlay.addEventListener("pointerleave", hide);
  const onMove = (event) => {
    if (pending) return;
    pending = requestAnimationFrame(() => {
      pending = null;
      if (event.buttons) return hide();  // dragging: rotating or drawing
      const box = view.stage.getBoundingClientRect();
      const mx = event.clientX - box.left, my = event.clientY - box.top;
      const screen = screenPositions(view);
      let best = -1, bestDistance = 64;  // within 8 pixels
      for (let i = 0; i < view.ids.length; i++) {
        const dx = screen[2 * i] - mx, dy = screen[2 * i + 1] - my;
        const d = dx * dx + dy * dy;
        if (d < bestDistance) { bestDistance = d; best = i; }
      }
      if (best < 0) return hide();
      const label = view.labelNames[view.labels[best]] ?? "";
      view.tipText.textContent = `#${view.ids[best]} · ${label}`;  // text, never HTML
      view.tipImage.src = new URL(`app/static/thumbs/${thumbName(view, best)}.jpg`, base).href;
      view.tooltip.style.left = `${Math.min(mx + 14, box.width - 150)}px`;
      view.tooltip.style.top = `${Math.min(my + 14, box.height - 160)}px`;
      view.tooltip.style.display = "block";
      view.root.dataset.hover = String(view.ids[best]);
    });
  };
  surface.addEventListener("pointermove", onMove);
  view.overlay.addEventListener("pointermove", onMove);
}

async function update(view, data) {
  view.stage.style.height = `${data.height || 560}px`;
  if (view.mapUrl !== data.map_url) {
    view.root.dataset.ready = "";
    view.status.textContent = "loading the map...";
    try {
      await buildScene(view, data);
    } catch (error) {
      view.status.textContent = `The map could not load: ${error.message}. Run ./run.sh again to reinstall three.js.`;
      view.root.dataset.error = String(error.message);
      return;
    }
    view.selected = new Set();
  }
  view.total = data.total;
  recolour(view, data);
  view.labels = data.labels.getChild("label").toArray();
  view.labelNames = data.label_names;
  const pushed = data.selection;
  if (pushed && pushed.token !== view.selectionToken && pushed.token !== view.lastPushed) {
    // Python replaced the selection (a confusion-matrix cell, a reload): show it.
    view.selectionToken = pushed.token;
    view.selected = new Set(pushed.indices || []);
  }
  applySelection(view);
  view.root.dataset.ready = "1";
  view.root.dataset.points = String(view.ids.length);
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  let view = views.get(parentElement);
  if (!view) {
    view = create(parentElement);
    views.set(parentElement, view);
  }
  view.setStateValue = setStateValue;
  // Updates run one after another; one that fails says so and never blocks the ones after it.
  view.chain = (view.chain || Promise.resolve()).then(() => update(view, data)).catch((error) => {
    view.status.textContent = `The map could not update: ${error.message}`;
    view.root.dataset.error = String(error.message);
  });
}
