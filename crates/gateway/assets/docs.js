// Renders /openapi.json as a browsable, keyboard-usable page (no external assets).
(async function () {
  const root = document.getElementById('docs');
  const spec = await (await fetch('/openapi.json')).json();
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => e.setAttribute(k, v));
    kids.flat().forEach(k => e.append(k instanceof Node ? k : document.createTextNode(String(k))));
    return e;
  };
  const ref = r => (r && r.$ref ? r.$ref.split('/').pop() : null);
  const schemaText = s => JSON.stringify(s, null, 2);
  root.textContent = '';
  root.append(el('h1', {}, spec.info.title + ' ' + spec.info.version));
  if (spec.info.description) root.append(el('p', {}, spec.info.description));
  const byTag = {};
  for (const [path, item] of Object.entries(spec.paths || {})) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || 'other';
      (byTag[tag] = byTag[tag] || []).push({ path, method, op });
    }
  }
  for (const [tag, ops] of Object.entries(byTag).sort()) {
    root.append(el('h2', { id: 'tag-' + tag }, tag));
    for (const { path, method, op } of ops) {
      const body = el('div', { class: 'body' });
      if (op.description) body.append(el('p', {}, op.description));
      const params = op.parameters || [];
      if (params.length) {
        body.append(el('h4', {}, 'Parameters'), el('table', {},
          params.map(p => el('tr', {}, el('td', {}, el('code', {}, p.name)), el('td', {}, p.in + (p.required ? ', required' : '')), el('td', {}, p.description || '')))));
      }
      if (op.requestBody) {
        const [ct, media] = Object.entries(op.requestBody.content || {})[0] || [];
        body.append(el('h4', {}, 'Body (' + ct + ')'), el('pre', {}, ref(media && media.schema) ? '→ schema ' + ref(media.schema) : schemaText(media && media.schema)));
      }
      body.append(el('h4', {}, 'Responses'), el('table', {}, Object.entries(op.responses || {}).map(([code, r]) => {
        const media = r.content ? Object.values(r.content)[0] : null;
        return el('tr', {}, el('td', {}, el('code', {}, code)), el('td', {}, r.description || ''), el('td', {}, media && ref(media.schema) ? ref(media.schema) : ''));
      })));
      root.append(el('details', {}, el('summary', {}, el('span', { class: 'm ' + method }, method.toUpperCase()), el('code', {}, path), el('span', {}, op.summary || '')), body));
    }
  }
  const schemas = (spec.components && spec.components.schemas) || {};
  root.append(el('h2', { id: 'schemas' }, 'Schemas'));
  for (const [name, s] of Object.entries(schemas).sort()) {
    root.append(el('details', { id: 'schema-' + name }, el('summary', {}, el('code', {}, name)), el('div', { class: 'body' }, el('pre', {}, schemaText(s)))));
  }
})().catch(e => { document.getElementById('docs').textContent = 'Could not load /openapi.json: ' + e; });
