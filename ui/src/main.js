// Bulwark's service map: namespaces and workloads as nodes, flows as edges
// coloured by verdict, a filterable flow table, and for a clicked edge or
// flow the policies that decided it and the agent's `policy trace`
// explanation. Everything comes from the agent that serves this page:
//   api/pods            pods with their workload (owner)
//   api/events          server-sent events: the flow ring's backlog, then live flows
//   api/trace?src=&dst=&port=&proto=   the engine's explanation of one verdict
import cytoscape from 'cytoscape';
import dagre from 'cytoscape-dagre';
import './style.css';

cytoscape.use(dagre);

const MAX_FLOWS = 5000; // flows kept in the page, oldest dropped first
const MAX_ROWS = 500; // rows the table shows, newest first

const state = {
  flows: [],
  pods: [],
  selected: null, // {kind: 'edge'|'flow', id}
  lost: 0,
};

const $ = (sel) => document.querySelector(sel);

// verdictClass maps a flow verdict onto the edge colours.
function verdictClass(v) {
  switch (v) {
    case 'DROPPED': case 'ERROR': return 'dropped';
    case 'AUDIT': return 'audit';
    case 'REDIRECTED': return 'redirected';
    default: return 'forwarded';
  }
}

// peerKey names the graph node of one side of a flow: a workload inside a
// namespace, or an outside peer (its DNS name, reserved identity or IP).
function peerNode(p) {
  if (p.namespace && p.pod) {
    const wl = p.workload || p.pod;
    return { id: `wl:${p.namespace}/${wl}`, label: wl, parent: `ns:${p.namespace}`, namespace: p.namespace, kind: 'workload' };
  }
  const reserved = (p.labels || []).find((l) => l.startsWith('reserved:'));
  // World addresses stay apart (each its own node); other reserved
  // identities (host, kube-apiserver, ...) are one node each.
  const entity = reserved ? reserved.slice('reserved:'.length) : '';
  const name = (p.names && p.names[0]) || (entity && entity !== 'world' ? entity : '') || p.ip || entity || `identity ${p.identity}`;
  return { id: `ext:${name}`, label: name, kind: 'external' };
}

function peerRef(p) {
  if (p.namespace && p.pod) return `${p.namespace}/${p.pod}`;
  return p.ip || '';
}

function peerText(p) {
  if (p.namespace && p.pod) return `${p.namespace}/${p.pod}`;
  return (p.names && p.names[0]) || p.ip || (p.labels || []).join(',') || `identity ${p.identity}`;
}

// Filters, as hubble observe's: namespace and pod match either side.
function readFilters() {
  return {
    namespace: $('#f-namespace').value,
    pod: $('#f-pod').value.trim(),
    verdict: $('#f-verdict').value,
    port: $('#f-port').value.trim(),
    protocol: $('#f-protocol').value,
  };
}

function matchPod(p, want) {
  if (!p.pod) return false;
  if (want.includes('/')) return `${p.namespace}/${p.pod}`.startsWith(want);
  return p.pod.startsWith(want);
}

function matches(f, flt) {
  if (flt.namespace && f.src.namespace !== flt.namespace && f.dst.namespace !== flt.namespace) return false;
  if (flt.pod && !matchPod(f.src, flt.pod) && !matchPod(f.dst, flt.pod)) return false;
  if (flt.verdict && f.verdict !== flt.verdict) return false;
  if (flt.port && String(f.port) !== flt.port && String(f.srcPort) !== flt.port) return false;
  if (flt.protocol && f.protocol !== flt.protocol) return false;
  return true;
}

function podMatchesFilter(p, flt) {
  if (flt.namespace && p.namespace !== flt.namespace) return false;
  if (flt.pod && !matchPod({ namespace: p.namespace, pod: p.name }, flt.pod)) return false;
  return true;
}

function workloadOf(p) {
  if (p.owner && p.owner.includes('/')) return p.owner.split('/')[1];
  return p.name;
}

function portText(f) {
  return f.port ? `${f.protocol}/${f.port}` : f.protocol;
}

function l7Text(f) {
  if (!f.l7) return '';
  if (f.l7.http) {
    const h = f.l7.http;
    return `${h.method || ''} ${h.url || ''}${h.code ? ' → ' + h.code : ''}`.trim();
  }
  if (f.l7.dns) {
    const d = f.l7.dns;
    return `DNS ${d.query || ''}${d.rcode !== undefined && f.l7.type === 'RESPONSE' ? ' rcode ' + d.rcode : ''}${d.ips && d.ips.length ? ' → ' + d.ips.join(',') : ''}`;
  }
  return f.l7.type || '';
}

// l7EdgeText is the short L7 form an edge lists: "GET /path", "DNS name".
function l7EdgeText(f) {
  if (!f.l7 || f.l7.type === 'RESPONSE') return '';
  if (f.l7.http) {
    let path = f.l7.http.url || '';
    try { path = new URL(path, 'http://x').pathname; } catch { /* keep it whole */ }
    return `${f.l7.http.method || ''} ${path}`.trim();
  }
  if (f.l7.dns) return `DNS ${f.l7.dns.query || ''}`.trim();
  return '';
}

// ---- graph ----

const cy = cytoscape({
  container: $('#map'),
  wheelSensitivity: 0.3,
  minZoom: 0.2,
  maxZoom: 3,
  style: [
    { selector: 'node', style: {
      'label': 'data(label)', 'font-size': 11, 'text-valign': 'center', 'text-halign': 'center',
      'background-color': '#ffffff', 'border-width': 1.5, 'border-color': '#4b5563',
      'shape': 'round-rectangle', 'width': 'label', 'height': 26, 'padding': '8px',
    } },
    { selector: 'node.external', style: { 'shape': 'ellipse', 'border-style': 'dashed', 'background-color': '#f3f4f6' } },
    { selector: ':parent', style: {
      'label': 'data(label)', 'text-valign': 'top', 'text-halign': 'center', 'font-weight': 'bold',
      'background-color': '#eef2f7', 'background-opacity': 0.6, 'border-color': '#9ca3af', 'border-width': 1,
      'shape': 'round-rectangle', 'padding': '14px',
    } },
    { selector: 'edge', style: {
      'width': 2, 'curve-style': 'bezier', 'target-arrow-shape': 'triangle', 'arrow-scale': 1,
      'label': 'data(label)', 'font-size': 9, 'text-rotation': 'autorotate', 'text-wrap': 'wrap', 'text-background-color': '#fff',
      'text-background-opacity': 0.85, 'text-background-padding': '1px', 'color': '#374151',
    } },
    { selector: 'edge.forwarded', style: { 'line-color': '#2e8b57', 'target-arrow-color': '#2e8b57' } },
    { selector: 'edge.dropped', style: { 'line-color': '#d62728', 'target-arrow-color': '#d62728', 'line-style': 'dashed', 'width': 3 } },
    { selector: 'edge.audit', style: { 'line-color': '#ff9f1c', 'target-arrow-color': '#ff9f1c', 'line-style': 'dashed' } },
    { selector: 'edge.redirected', style: { 'line-color': '#1f77b4', 'target-arrow-color': '#1f77b4' } },
    { selector: ':selected', style: { 'overlay-color': '#2563eb', 'overlay-opacity': 0.15, 'overlay-padding': 6 } },
  ],
});

// The map's box changes with the window and when the details open: the
// whole map stays in view.
new ResizeObserver(() => {
  cy.resize();
  cy.fit(undefined, 24);
}).observe(document.querySelector('#map'));

let layoutKey = '';

function runLayout() {
  cy.layout({ name: 'dagre', rankDir: 'LR', nodeSep: 30, rankSep: 90, edgeSep: 10, padding: 24, animate: false, fit: true }).run();
}

// graphFor builds the elements the filtered flows and pods call for.
// Reply flows add no edge: the request's edge already shows the connection.
function graphFor(flows, flt) {
  const nodes = new Map();
  const edges = new Map();
  const addNode = (n) => {
    if (n.parent && !nodes.has(n.parent)) nodes.set(n.parent, { id: n.parent, label: n.namespace, kind: 'namespace' });
    if (!nodes.has(n.id)) nodes.set(n.id, n);
  };
  for (const p of state.pods) {
    if (!podMatchesFilter(p, flt)) continue;
    addNode(peerNode({ namespace: p.namespace, pod: p.name, workload: workloadOf(p) }));
  }
  for (const f of flows) {
    if (f.reply) continue;
    const s = peerNode(f.src);
    const d = peerNode(f.dst);
    addNode(s);
    addNode(d);
    const cls = verdictClass(f.verdict);
    const id = `e:${s.id}|${d.id}|${cls}`;
    let e = edges.get(id);
    if (!e) {
      e = { id, source: s.id, target: d.id, verdict: cls, count: 0, ports: new Set(), l7: new Set(), flows: [] };
      edges.set(id, e);
    }
    e.count++;
    e.ports.add(portText(f));
    const l7 = l7EdgeText(f);
    if (l7) e.l7.add(l7);
    e.flows.push(f);
  }
  return { nodes, edges };
}

let currentEdges = new Map();

function renderGraph(filtered, flt) {
  const { nodes, edges } = graphFor(filtered, flt);
  currentEdges = edges;
  const key = [...nodes.keys()].sort().join(',') + '#' + [...edges.keys()].sort().join(',');
  cy.batch(() => {
    cy.elements().forEach((el) => {
      if (!(el.isNode() ? nodes.has(el.id()) : edges.has(el.id()))) el.remove();
    });
    for (const n of nodes.values()) {
      const data = { id: n.id, label: n.label };
      if (n.parent) data.parent = n.parent;
      if (cy.getElementById(n.id).empty()) cy.add({ group: 'nodes', data, classes: n.kind });
    }
    for (const e of edges.values()) {
      const l7 = [...e.l7].slice(0, 2).join(', ') + (e.l7.size > 2 ? ' …' : '');
      const label = `${[...e.ports].slice(0, 3).join(' ')}${e.ports.size > 3 ? ' …' : ''} ×${e.count}${l7 ? '\n' + l7 : ''}`;
      const el = cy.getElementById(e.id);
      if (el.empty()) {
        cy.add({ group: 'edges', data: { id: e.id, source: e.source, target: e.target, label, verdict: e.verdict }, classes: e.verdict });
      } else {
        el.data('label', label);
      }
    }
  });
  if (key !== layoutKey) {
    layoutKey = key;
    runLayout();
  }
}

// ---- table ----

function renderTable(filtered) {
  const tbody = $('#flows tbody');
  const rows = [];
  for (let i = filtered.length - 1; i >= 0 && rows.length < MAX_ROWS; i--) rows.push(filtered[i]);
  const frag = document.createDocumentFragment();
  for (const f of rows) {
    const tr = document.createElement('tr');
    tr.dataset.flowId = f.id;
    tr.dataset.verdict = f.verdict;
    if (state.selected && state.selected.kind === 'flow' && state.selected.id === f.id) tr.classList.add('selected');
    const cells = [
      new Date(f.time).toLocaleTimeString(),
      peerText(f.src) + (f.srcPort ? ':' + f.srcPort : ''),
      peerText(f.dst),
      portText(f),
      f.verdict + (f.reply ? ' (reply)' : ''),
      (f.policies || []).join(', '),
      l7Text(f) || f.dropReason || f.summary || '',
    ];
    cells.forEach((c, i) => {
      const td = document.createElement('td');
      td.textContent = c;
      if (i === 4) td.className = `verdict ${f.verdict}`;
      tr.appendChild(td);
    });
    frag.appendChild(tr);
  }
  tbody.replaceChildren(frag);
}

// ---- details ----

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  Object.assign(e, attrs || {});
  for (const c of children) e.append(c);
  return e;
}

// shortLabels leaves out the labels every pod of a namespace shares
// (namespace, namespace labels, cluster): the ones that tell pods apart stay.
function shortLabels(labels) {
  return (labels || [])
    .filter((l) => !/^k8s:io\.(cilium\.k8s\.(namespace\.labels\.|policy\.cluster=)|kubernetes\.pod\.namespace=)/.test(l))
    .join(' ');
}

function dl(pairs) {
  const d = el('dl');
  for (const [k, v] of pairs) {
    if (v === undefined || v === null || v === '') continue;
    d.append(el('dt', {}, k), el('dd', {}, String(v)));
  }
  return d;
}

function policyList(policies) {
  const p = el('p', { className: 'policies' });
  if (!policies || policies.length === 0) {
    p.append('no policy named (no policy selects these pods, or the verdict was not a policy decision)');
    return p;
  }
  policies.forEach((name, i) => {
    if (i) p.append(', ');
    p.append(el('span', { className: 'policy' }, name));
  });
  return p;
}

async function traceSection(f) {
  const sec = el('section', { className: 'trace' }, el('h3', {}, 'policy trace'));
  const src = peerRef(f.src);
  const dst = peerRef(f.dst);
  if (!src || !dst || !f.port) {
    sec.append(el('p', {}, 'no trace: the flow has no pod or address on one side, or no port'));
    return sec;
  }
  const pre = el('pre', { className: 'trace-text' }, 'tracing…');
  sec.append(pre);
  const q = new URLSearchParams({ src, dst, port: String(f.port), proto: f.protocol });
  try {
    const r = await fetch(`api/trace?${q}`);
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || r.statusText);
    pre.textContent = body.text;
    sec.insertBefore(el('p', {}, 'now decided: ', el('b', { className: `verdict ${body.verdict === 'allowed' ? 'FORWARDED' : 'DROPPED'}` }, body.verdict),
      body.policies && body.policies.length ? ' by ' + body.policies.join(', ') : ''), pre);
  } catch (err) {
    pre.textContent = `trace failed: ${err.message}`;
  }
  return sec;
}

function l7Section(flows) {
  const l7 = flows.filter((f) => f.l7).slice(-10);
  if (l7.length === 0) return null;
  const ul = el('ul');
  for (const f of l7) ul.append(el('li', {}, `${f.l7.type || ''} ${l7Text(f)} ${f.verdict}`));
  return el('section', {}, el('h3', {}, 'L7'), ul);
}

async function showDetails(title, flows, latest) {
  const body = $('#details-body');
  const policies = [...new Set(flows.flatMap((f) => f.policies || []))];
  const parts = [
    el('h2', {}, title),
    dl([
      ['verdict', latest.verdict],
      ['drop reason', latest.dropReason],
      ['direction', latest.direction],
      ['source', peerText(latest.src)],
      ['source labels', shortLabels(latest.src.labels)],
      ['destination', peerText(latest.dst)],
      ['destination labels', shortLabels(latest.dst.labels)],
      ['ports', [...new Set(flows.map(portText))].join(' ')],
      ['flows', flows.length],
      ['last seen', new Date(latest.time).toLocaleString()],
    ]),
    el('h3', {}, latest.verdict === 'FORWARDED' || latest.verdict === 'REDIRECTED' ? 'allowed by' : 'decided by'),
    policyList(policies),
  ];
  const l7 = l7Section(flows);
  if (l7) parts.push(l7);
  body.replaceChildren(...parts);
  $('#details').hidden = false;
  const token = (showDetails.token = (showDetails.token || 0) + 1);
  const tr = await traceSection(latest);
  if (token === showDetails.token) body.append(tr);
}

function selectEdge(id) {
  const e = currentEdges.get(id);
  if (!e) return;
  state.selected = { kind: 'edge', id };
  const latest = e.flows[e.flows.length - 1];
  const s = cy.getElementById(e.source).data('label');
  const d = cy.getElementById(e.target).data('label');
  showDetails(`${s} → ${d} (${e.verdict})`, e.flows, latest);
}

function selectFlow(id) {
  const f = state.flows.find((x) => x.id === id);
  if (!f) return;
  state.selected = { kind: 'flow', id };
  document.querySelectorAll('#flows tr.selected').forEach((tr) => tr.classList.remove('selected'));
  const tr = document.querySelector(`#flows tr[data-flow-id="${CSS.escape(id)}"]`);
  if (tr) tr.classList.add('selected');
  showDetails(`${peerText(f.src)} → ${peerText(f.dst)} ${portText(f)}`, [f], f);
}

cy.on('tap', 'edge', (evt) => selectEdge(evt.target.id()));
$('#flows tbody').addEventListener('click', (evt) => {
  const tr = evt.target.closest('tr');
  if (tr) selectFlow(tr.dataset.flowId);
});
$('#details-close').addEventListener('click', () => {
  $('#details').hidden = true;
  state.selected = null;
});

// ---- data ----

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  setTimeout(() => {
    renderPending = false;
    render();
  }, 250);
}

function render() {
  const flt = readFilters();
  const filtered = state.flows.filter((f) => matches(f, flt));
  renderGraph(filtered, flt);
  renderTable(filtered);
  renderNamespaces();
  document.body.dataset.flows = String(state.flows.length);
}

function renderNamespaces() {
  const sel = $('#f-namespace');
  const have = new Set([...sel.options].map((o) => o.value));
  const want = new Set(state.pods.map((p) => p.namespace));
  for (const f of state.flows) {
    if (f.src.namespace) want.add(f.src.namespace);
    if (f.dst.namespace) want.add(f.dst.namespace);
  }
  for (const ns of [...want].sort()) {
    if (!have.has(ns)) sel.append(el('option', { value: ns }, ns));
  }
}

async function loadPods() {
  try {
    const r = await fetch('api/pods');
    if (r.ok) {
      state.pods = await r.json();
      scheduleRender();
    }
  } catch {
    // the agent is gone or restarting; the next poll retries
  }
}

async function loadInfo() {
  try {
    const r = await fetch('api/info');
    if (r.ok) $('#instance').textContent = (await r.json()).instance || '';
  } catch {
    // informative only
  }
}

function connect() {
  const live = $('#live');
  const es = new EventSource('api/events');
  es.addEventListener('open', () => {
    live.textContent = 'live';
    live.className = 'live on';
  });
  es.addEventListener('flow', (evt) => {
    state.flows.push(JSON.parse(evt.data));
    if (state.flows.length > MAX_FLOWS) state.flows.splice(0, state.flows.length - MAX_FLOWS);
    scheduleRender();
  });
  es.addEventListener('reset', () => {
    // A reconnect replays the backlog: start again from it.
    state.flows = [];
  });
  es.addEventListener('lost', (evt) => {
    state.lost += JSON.parse(evt.data).count;
    live.textContent = `live (${state.lost} flows lost)`;
  });
  es.addEventListener('error', () => {
    live.textContent = 'reconnecting';
    live.className = 'live off';
  });
}

$('#filters').addEventListener('input', scheduleRender);
$('#filters').addEventListener('reset', () => setTimeout(scheduleRender, 0));
$('#filters').addEventListener('submit', (e) => e.preventDefault());

// A hook for tests and the curious: the graph and the flows the page holds.
window.bulwarkMap = {
  cy,
  flows: () => state.flows,
  // edgePoint returns an edge's midpoint in page coordinates, for a click.
  edgePoint(id) {
    const e = cy.getElementById(id);
    if (e.empty()) return null;
    const m = e.renderedMidpoint();
    const r = $('#map').getBoundingClientRect();
    return { x: r.left + m.x, y: r.top + m.y };
  },
};

loadInfo();
loadPods();
setInterval(loadPods, 5000);
connect();
