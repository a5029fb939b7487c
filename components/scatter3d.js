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
  const status = element("span", "map-status", toolbar);
  const stage = element("div", "map-stage", root);
  const overlay = element("canvas", "map-overlay", stage);
  const tooltip = element("div", "map-tooltip", stage);
  const tipImage = element("img", "", tooltip);
  const tipText = element("div", "", tooltip);
  tooltip.style.display = "none";
  const view = {
    root, toolbar, modeButton, clearButton, resetButton, status, stage, overlay, tooltip, tipImage, tipText,
    mode: "rotate", selected: new Set(), selectionToken: null, lastPushed: null, mapUrl: null, data: null,
    setStateValue: null, three: null, points: null, ids: null, thumbs: null, codes: null, palette: [], hidden: new Set(),
  };
  modeButton.onclick = () => setMode(view, view.mode === "rotate" ? "lasso" : "rotate");
  clearButton.onclick = () => { view.selected.clear(); applySelection(view); sendSelection(view, null); };
  resetButton.onclick = () => resetCamera(view);
  root.tabIndex = 0;
  root.addEventListener("keydown", (event) => {
    if (event.key === "l" || event.key === "L") setMode(view, view.mode === "rotate" ? "lasso" : "rotate");
    if (event.key === "Escape") setMode(view, "rotate");
  });
  setMode(view, "rotate");
  return view;
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
  if (!restoreCamera(view)) resetCamera(view);
  resize(view);
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

function resetCamera(view) {
  view.camera.position.set(0, 0, 2.4);
  view.controls.target.set(0, 0, 0);
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
  const palette = data.palette.map((entry) => new view.THREE.Color(entry.color));
  const hidden = new Set(data.hidden || []);
  const colours = view.cloud.geometry.getAttribute("color");
  const shown = view.cloud.geometry.getAttribute("shown");
  for (let i = 0; i < codes.length; i++) {
    const colour = palette[codes[i]] || palette[0];
    colours.array[3 * i] = colour.r;
    colours.array[3 * i + 1] = colour.g;
    colours.array[3 * i + 2] = colour.b;
    shown.array[i] = hidden.has(codes[i]) ? 0 : 1;
  }
  colours.needsUpdate = true;
  shown.needsUpdate = true;
  view.codes = codes;
  view.palette = data.palette;
  view.hidden = hidden;
  view.recolours = (view.recolours || 0) + 1;
  view.root.dataset.colours = String(view.recolours);  // tests and benchmarks wait on this
}

function applySelection(view) {
  const picked = view.cloud.geometry.getAttribute("picked");
  picked.array.fill(0);
  for (const i of view.selected) picked.array[i] = 1;
  picked.needsUpdate = true;
  view.status.textContent = `${view.ids.length.toLocaleString()} points · ${view.selected.size.toLocaleString()} selected`;
  view.root.dataset.selected = String(view.selected.size);
  render(view);
}

function sendSelection(view, releasedAt) {
  const indices = Array.from(view.selected).sort((a, b) => a - b);
  view.lastPushed = `js-${Date.now()}-${Math.random()}`;
  view.setStateValue("selection", { token: view.lastPushed, indices, released_at: releasedAt });
}

function screenPositions(view) {
  // Every point projected with the current camera: NDC -> pixels; NaN for points behind the camera or hidden.
  const THREE = view.THREE;
  const matrix = new THREE.Matrix4().multiplyMatrices(view.camera.projectionMatrix, view.camera.matrixWorldInverse);
  const e = matrix.elements, p = view.points, n = view.ids.length;
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
  const canvas = view.overlay, context = canvas.getContext("2d");
  let polygon = null, operation = "replace";
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  };
  const draw = () => {
    context.clearRect(0, 0, canvas.width, canvas.height);
    if (!polygon || polygon.length < 2) return;
    context.strokeStyle = operation === "subtract" ? "#ff6b6b" : "#ffd43b";
    context.fillStyle = operation === "subtract" ? "rgba(255,107,107,0.12)" : "rgba(255,212,59,0.12)";
    context.lineWidth = 2;
    context.beginPath();
    context.moveTo(polygon[0][0], polygon[0][1]);
    for (const [x, y] of polygon.slice(1)) context.lineTo(x, y);
    context.closePath();
    context.fill();
    context.stroke();
  };
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
    if (!polygon) return;
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
    sendSelection(view, releasedAt);
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
  view.stage.style.height = `${data.height || 620}px`;
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
  view.chain = (view.chain || Promise.resolve()).then(() => update(view, data));
}
