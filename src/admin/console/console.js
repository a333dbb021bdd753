// hookrelay console: a small client for the admin API. No framework and no innerHTML:
// every piece of data reaches the page as text.
'use strict';

(() => {
  const TOKEN_KEY = 'hookrelay.token';
  const PRODUCT = 'hookrelay console';
  const STATUSES = ['pending', 'in_flight', 'succeeded', 'failed', 'cancelled'];
  const FILTERS = ['route', 'event', 'status', 'since'];

  const state = {
    token: '',
    signedIn: false,
    gen: 0, // bumped on every navigation: late answers for an older view are dropped
    view: null, // {name, id?}
    filter: { route: '', event: '', status: '', since: '' },
    eventsQuery: null, // the query of the first page shown
    eventsPaged: false, // older pages were loaded: a live reload would lose them
    shown: '', // what the list or detail shows now, to skip reloads that change nothing
    expanded: new Set(), // deliveries whose attempts are shown
  };

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  function parseJSON(text) {
    try {
      return { value: JSON.parse(text) };
    } catch {
      return null;
    }
  }

  /** [error, value] of a promise, so that each call site reads top to bottom. */
  const settle = (promise) => promise.then((value) => [null, value], (err) => [err, undefined]);

  function decode(text) {
    try {
      return decodeURIComponent(text);
    } catch {
      return text;
    }
  }

  // ---- DOM helpers --------------------------------------------------------------------

  /** An element; attributes are set with setAttribute (never handlers), children as text. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (/^on/i.test(name)) throw new Error('no inline handlers');
      node.setAttribute(name, value === true ? '' : String(value));
    }
    return append(node, children);
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function button(text, attrs, handler) {
    const node = el('button', Object.assign({ type: 'button' }, attrs), text);
    if (handler) node.addEventListener('click', handler);
    return node;
  }

  const heading = (level, text, attrs) => el('h' + level, attrs, text);
  const hint = (text) => el('p', { class: 'hint' }, text);
  const dash = (value) => (value === null || value === undefined || value === '' ? '—' : String(value));
  // A request kept by store.keep_unmatched has no route.
  const routeOf = (value) => (value === '' ? '(none: kept unmatched)' : dash(value));
  const code = (text) => el('code', {}, text);
  const field = (id, label, control) => el('div', { class: 'field' }, el('label', { for: id }, label), control);

  function time(ms) {
    if (ms === null || ms === undefined || !Number.isFinite(Number(ms))) return '—';
    const date = new Date(Number(ms));
    return el('time', { datetime: date.toISOString() }, date.toLocaleString());
  }

  /** A <dl> of [term, value] pairs; a pair whose value is undefined is left out. */
  function defs(rows) {
    const rowsShown = rows.filter(([, value]) => value !== undefined);
    return el('dl', { class: 'defs' }, rowsShown.map(([term, value]) => el('div', {}, el('dt', {}, term), el('dd', {}, value === null ? '—' : value))));
  }

  /** Headers as a list: [[name, value], ...] or {name: value}. */
  function headerList(headers) {
    const pairs = Array.isArray(headers) ? headers : Object.entries(headers || {});
    if (!pairs.length) return hint('No headers');
    return el('dl', { class: 'headers' }, pairs.map((pair) => {
      const [name, value] = Array.isArray(pair) ? pair : [pair, ''];
      return el('div', {}, el('dt', {}, dash(name)), el('dd', {}, String(value ?? '')));
    }));
  }

  /** A body in a <pre>: pretty JSON when it is JSON (a string that parses, or a value). */
  function bodyBlock(body) {
    if (body === null || body === undefined || body === '') return hint('Empty body');
    const parsed = typeof body === 'string' ? parseJSON(body) : { value: body };
    return el('pre', { class: 'body' }, parsed ? JSON.stringify(parsed.value, null, 2) : body);
  }

  function requestBlock(request) {
    return el('div', { class: 'request' }, el('p', {}, code(dash(request.method) + ' ' + dash(request.url))), headerList(request.headers), bodyBlock(request.body));
  }

  function table(caption, columns, rows, attrs) {
    return el('table', Object.assign({ class: 'responsive' }, attrs),
      el('caption', { class: 'visually-hidden' }, caption),
      el('thead', {}, el('tr', {}, columns.map((name) => el('th', { scope: 'col' }, name)))),
      el('tbody', {}, rows.map((cells) => row(columns, cells))));
  }

  const row = (columns, cells) => el('tr', {}, cells.map((cell, i) => el('td', { 'data-label': columns[i] }, cell)));
  const badge = (text, kind) => el('span', { class: 'badge', 'data-kind': kind }, text);

  /**
   * Replaces a container's content. Open <details> stay open (`openDetails`), and when
   * focus was inside, it goes back to the control with the same data-key (or a neighbour),
   * so that a live reload or an action's refresh does not throw keyboard users out.
   */
  const openDetails = new Set();
  const FOCUS_ALTERNATIVES = {
    cancel: (rest) => ['retry:' + rest, 'delivery:' + rest],
    retry: (rest) => ['delivery:' + rest],
    attempts: (rest) => ['delivery:' + rest],
    request: (rest) => ['delivery:' + rest],
    pause: (rest) => ['resume:' + rest],
    resume: (rest) => ['pause:' + rest],
  };
  function swap(container, ...nodes) {
    const active = document.activeElement;
    const focusWasInside = active && active !== container && container.contains(active);
    const keyed = focusWasInside ? active.closest('[data-key]') : null;
    const key = keyed && container.contains(keyed) ? keyed.getAttribute('data-key') : '';
    container.replaceChildren();
    append(container, nodes);
    for (const details of container.querySelectorAll('details[data-key]')) {
      if (openDetails.has(details.getAttribute('data-key'))) details.open = true;
    }
    if (!focusWasInside) return;
    const colon = key.indexOf(':');
    const alternatives = colon > 0 && FOCUS_ALTERNATIVES[key.slice(0, colon)];
    const tries = key ? [key, ...(alternatives ? alternatives(key.slice(colon + 1)) : [])] : [];
    const find = (k) => container.querySelector('[data-key="' + CSS.escape(k) + '"]');
    for (const k of tries) {
      const found = find(k);
      if (found) return (found.matches('details') ? found.querySelector('summary') : found).focus();
    }
    focusHeading();
  }

  function focusHeading() {
    $('view').querySelector('h2')?.focus();
  }

  // ---- status messages ----------------------------------------------------------------

  function say(...parts) {
    $('status').replaceChildren(el('p', { class: 'message' }, parts));
  }

  function sayError(err, what) {
    $('status').replaceChildren(el('p', { class: 'message error' }, el('strong', {}, 'Error: '), describeError(err, what)));
  }

  function describeError(err, what) {
    const prefix = what ? what + ': ' : '';
    if (!(err instanceof ApiError)) return prefix + String(err && err.message ? err.message : err);
    const detail = describeDetail(err.detail);
    return prefix + err.error + (err.status ? ' (HTTP ' + err.status + ')' : '') + (detail ? ' — ' + detail : '');
  }

  function describeDetail(detail) {
    if (detail === null || detail === undefined || detail === '') return '';
    if (typeof detail === 'string') return detail;
    if (Array.isArray(detail)) return detail.map(describeDetail).join('; ');
    if (Array.isArray(detail.not_matched) && detail.not_matched.length) {
      return detail.not_matched.map((n) => dash(n.route) + ': ' + dash(n.why_not)).join('; ');
    }
    return JSON.stringify(detail);
  }

  // ---- the API ------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, error, detail) {
      super(error);
      Object.assign(this, { status, error, detail });
    }
  }

  const authHeaders = () => (state.token ? { Authorization: 'Bearer ' + state.token } : {});

  /** A call to the admin API: the parsed answer, or an ApiError with the API's error and detail. */
  async function api(method, path, body) {
    const init = { method, headers: authHeaders(), cache: 'no-store', credentials: 'omit' };
    if (method !== 'GET') {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body === undefined ? {} : body);
    }
    const [failed, response] = await settle(fetch(path, init));
    if (failed) throw new ApiError(0, 'the relay could not be reached', failed.message);
    const text = await response.text().catch(() => '');
    const parsed = text ? parseJSON(text) : { value: null };
    const data = parsed ? parsed.value : text;
    if (response.status === 401 && state.signedIn) showLogin('the token was refused');
    if (!response.ok) {
      const object = data && typeof data === 'object';
      throw new ApiError(response.status, object && data.error ? String(data.error) : response.statusText || 'request failed', object ? data.detail : data);
    }
    return data;
  }

  /** A button's POST: ignored while one runs, then `after` (a refresh) whatever the outcome. */
  function action(path, done, failed, after) {
    return async (e) => {
      const target = e.currentTarget;
      if (target.getAttribute('aria-disabled') === 'true') return;
      target.setAttribute('aria-disabled', 'true');
      const [err] = await settle(api('POST', path, {}));
      if (err) sayError(err, failed);
      else say(done);
      target.removeAttribute('aria-disabled');
      after();
    };
  }

  // ---- signing in ---------------------------------------------------------------------

  function takeTokenFromHash() {
    if (!location.hash.startsWith('#token=')) return false;
    const token = decode(location.hash.slice('#token='.length));
    history.replaceState(null, '', location.pathname + location.search + '#/events');
    setToken(token);
    return true;
  }

  function setToken(token) {
    state.token = token;
    try {
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch {
      /* storage refused: the token lives in memory only */
    }
  }

  async function checkToken(focus) {
    const [err] = await settle(api('GET', '/api/status'));
    if (!err) return showApp(focus);
    showLogin(err.status === 401 && state.token ? 'the token was refused' : '');
    if (err.status !== 401) sayError(err, 'Could not reach the admin API');
  }

  function showLogin(message) {
    state.signedIn = false;
    state.gen++;
    stopStream();
    $('app-bar').hidden = true;
    $('view').hidden = true;
    $('view').replaceChildren();
    $('login').hidden = false;
    document.title = 'Sign in — ' + PRODUCT;
    const note = $('login-message');
    note.textContent = message ? 'Could not sign in: ' + message + '.' : '';
    note.hidden = !message;
    $('token-input').setAttribute('aria-describedby', message ? 'login-message token-help' : 'token-help');
    if (message) {
      sayError(message);
      $('token-input').focus();
    }
  }

  function showApp(focus) {
    state.signedIn = true;
    $('login').hidden = true;
    $('token-input').value = '';
    $('app-bar').hidden = false;
    $('view').hidden = false;
    stopStream(); // the token may have changed
    startStream();
    route(focus);
  }

  function signOut() {
    setToken('');
    showLogin('');
    say('Signed out.');
    $('login-title').focus();
  }

  // ---- routing ------------------------------------------------------------------------

  function parseHash() {
    const hash = location.hash;
    if (hash.startsWith('#/events/') && hash.length > 9) return { name: 'event', id: decode(hash.slice(9)) };
    if (hash === '#/targets') return { name: 'targets' };
    if (hash === '#/routes') return { name: 'routes' };
    return { name: 'events' };
  }

  function route(focus) {
    if (!state.signedIn) return;
    const view = parseHash();
    state.view = view;
    state.shown = '';
    openDetails.clear();
    $('status').replaceChildren(); // messages belong to the view they were said in
    const gen = ++state.gen;
    const section = view.name === 'event' ? 'events' : view.name;
    for (const link of document.querySelectorAll('nav a[data-view]')) {
      if (link.dataset.view === section) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    ({ events: viewEvents, event: viewEvent, targets: viewTargets, routes: viewRoutes })[view.name](gen, view);
    if (focus) focusHeading();
  }

  const alive = (gen) => gen === state.gen && state.signedIn;

  function setView(title, ...nodes) {
    document.title = title + ' — ' + PRODUCT;
    $('view').replaceChildren();
    append($('view'), [heading(2, title, { tabindex: '-1', class: 'view-title' }), nodes]);
  }

  async function fillRouteSelect(gen, select, required) {
    const [err, answer] = await settle(api('GET', '/api/routes'));
    if (err) {
      if (alive(gen)) sayError(err, 'Could not list routes');
      return [];
    }
    const routes = (answer && answer.routes) || [];
    if (!alive(gen)) return routes;
    const wanted = select.value;
    const names = routes.map((r) => String(r.name));
    if (wanted && !names.includes(wanted)) names.push(wanted);
    select.replaceChildren();
    append(select, [required ? null : el('option', { value: '' }, 'any route'), names.map((name) => el('option', { value: name }, name))]);
    select.value = wanted || (required ? names[0] || '' : '');
    return routes;
  }

  // ---- Events -------------------------------------------------------------------------

  const EVENT_COLUMNS = ['Received', 'Route', 'Event', 'Request', 'ID'];

  function viewEvents(gen) {
    const f = state.filter;
    const routeSelect = el('select', { id: 'filter-route', name: 'route' }, el('option', { value: '' }, 'any route'), f.route ? el('option', { value: f.route, selected: true }, f.route) : null);
    const statusSelect = el('select', { id: 'filter-status', name: 'status' }, el('option', { value: '' }, 'any'), STATUSES.map((s) => el('option', { value: s, selected: s === f.status }, s)));
    const text = (id, name, value, placeholder) => el('input', { id, name, type: 'text', value, placeholder, spellcheck: 'false', autocomplete: 'off' });
    const form = el('form', { id: 'event-filter', class: 'filter', 'aria-label': 'Filter events' },
      field('filter-route', 'Route', routeSelect),
      field('filter-event', 'Event (glob)', text('filter-event', 'event', f.event, 'issue*')),
      field('filter-status', 'Status', statusSelect),
      field('filter-since', 'Since', text('filter-since', 'since', f.since, '1h, 30m or RFC 3339')),
      el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Apply'), button('Clear', { id: 'filter-clear' }, () => {
        for (const name of FILTERS) $('filter-' + name).value = '';
        form.requestSubmit();
      })));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      for (const name of FILTERS) state.filter[name] = $('filter-' + name).value.trim();
      loadEvents(gen, true);
    });
    setView('Events', form, el('div', { id: 'events-results' }, hint('Loading…')));
    fillRouteSelect(gen, routeSelect, false);
    loadEvents(gen, false);
  }

  function eventsQuery() {
    const query = new URLSearchParams();
    for (const name of FILTERS) if (state.filter[name]) query.set(name, state.filter[name]);
    query.set('limit', '50');
    return query;
  }

  async function loadEvents(gen, announce) {
    const query = eventsQuery();
    const [err, page] = await settle(api('GET', '/api/events?' + query));
    if (!alive(gen)) return;
    if (err) {
      swap($('events-results'), hint('The events could not be listed.'));
      return sayError(err, 'Could not list events');
    }
    const items = page.items || [];
    if (announce) say(items.length === 1 ? '1 event shown.' : items.length + ' events shown.');
    const shown = JSON.stringify([String(query), page]);
    if (shown === state.shown && !state.eventsPaged) return; // a live reload that changed nothing
    Object.assign(state, { shown, eventsQuery: query, eventsPaged: false });
    if (!items.length) {
      const filtered = FILTERS.some((k) => state.filter[k]);
      return swap($('events-results'), el('p', { id: 'events-empty', class: 'empty' }, filtered ? 'No events yet that match the filter' : 'No events yet'));
    }
    swap($('events-results'), table('Received events, newest first', EVENT_COLUMNS, [], { id: 'events-table' }), moreButton(gen, page.next_cursor));
    $('events-table').tBodies[0].append(...items.map(eventRow));
  }

  function eventRow(item) {
    const link = el('a', { class: 'event-link', href: '#/events/' + enc(item.id), 'data-key': 'event:' + item.id }, String(item.id));
    return row(EVENT_COLUMNS, [time(item.received_at), routeOf(item.route), dash(item.event), code(dash(item.method) + ' ' + dash(item.path)),
      [link, item.replay_of ? el('span', { class: 'detail' }, 'replay of ' + item.replay_of) : null]]);
  }

  function moreButton(gen, cursor) {
    if (!cursor) return null;
    const more = button('Load older', { id: 'events-more', 'data-key': 'more' });
    more.addEventListener('click', async () => {
      if (more.getAttribute('aria-disabled') === 'true') return;
      more.setAttribute('aria-disabled', 'true');
      const query = new URLSearchParams(state.eventsQuery || eventsQuery());
      query.set('cursor', cursor);
      const [err, page] = await settle(api('GET', '/api/events?' + query));
      more.removeAttribute('aria-disabled');
      if (!alive(gen)) return;
      if (err) return sayError(err, 'Could not load older events');
      state.eventsPaged = true;
      const rows = (page.items || []).map(eventRow);
      $('events-table').tBodies[0].append(...rows);
      const next = moreButton(gen, page.next_cursor);
      if (next) {
        more.replaceWith(next);
        return next.focus();
      }
      more.remove();
      rows[0]?.querySelector('a')?.focus();
      say('No older events.');
    });
    return more;
  }

  // ---- Event detail -------------------------------------------------------------------

  function viewEvent(gen, view) {
    state.expanded.clear();
    setView('Event ' + view.id, el('p', {}, el('a', { href: '#/events' }, 'Back to events')), el('div', { id: 'event-detail' }, hint('Loading…')));
    loadEvent(gen, view.id, true);
  }

  async function loadEvent(gen, id, first) {
    const [err, event] = await settle(api('GET', '/api/events/' + enc(id)));
    if (!alive(gen)) return;
    if (err) {
      if (first) swap($('event-detail'), el('p', { class: 'empty' }, err.status === 404 ? 'No event with this id: it may have been pruned.' : 'The event could not be loaded.'));
      return sayError(err, err.status === 404 ? 'No such event' : 'Could not load the event');
    }
    const shown = JSON.stringify(event);
    if (shown === state.shown) return; // a live reload that changed nothing
    state.shown = shown;
    const deliveries = event.deliveries || [];
    swap($('event-detail'),
      defs([
        ['ID', code(String(event.id))],
        ['Received', time(event.received_at)],
        ['Route', routeOf(event.route)],
        ['Event', dash(event.event)],
        ['Sender delivery id', dash(event.delivery_id)],
        ['Replay of', event.replay_of ? el('a', { href: '#/events/' + enc(event.replay_of), id: 'replay-of-link' }, String(event.replay_of)) : undefined],
        ['Request', code(dash(event.method) + ' ' + dash(event.path))],
      ]),
      heading(3, 'Headers'), headerList(event.headers),
      heading(3, 'Body'), bodyBlock(event.body),
      heading(3, 'Deliveries (' + deliveries.length + ')'),
      deliveries.length ? deliveries.map((d) => deliverySection(gen, id, d)) : el('p', { class: 'empty' }, 'No deliveries'));
    if (!$('replay-preview')) $('view').append(replaySection(gen, id));
    for (const delivery of deliveries) if (state.expanded.has(delivery.id)) loadAttempts(gen, delivery.id);
  }

  const DELIVERY_KIND = { succeeded: 'ok', failed: 'bad', cancelled: 'muted', pending: 'wait', in_flight: 'wait' };

  function deliverySection(gen, eventId, d) {
    const attemptsId = 'attempts-' + d.id;
    const headingId = 'delivery-' + d.id;
    const expanded = state.expanded.has(d.id);
    const refresh = () => alive(gen) && loadEvent(gen, eventId, false);
    const path = '/api/deliveries/' + enc(d.id);
    const toggle = button('Attempts', { class: 'attempts-button', 'aria-expanded': String(expanded), 'aria-controls': attemptsId, 'aria-describedby': headingId, 'data-key': 'attempts:' + d.id });
    toggle.addEventListener('click', () => {
      const open = toggle.getAttribute('aria-expanded') !== 'true';
      toggle.setAttribute('aria-expanded', String(open));
      if (open) {
        state.expanded.add(d.id);
        return loadAttempts(gen, d.id);
      }
      state.expanded.delete(d.id);
      $(attemptsId).hidden = true;
      $(attemptsId).replaceChildren();
    });
    return el('section', { class: 'delivery', 'aria-labelledby': headingId },
      heading(4, [dash(d.target) + ' — ', badge(dash(d.status), DELIVERY_KIND[d.status] || 'muted')], { id: headingId, tabindex: '-1', 'data-key': 'delivery:' + d.id }),
      defs([
        ['Delivery', code(String(d.id))],
        ['Route', dash(d.route)],
        ['Attempts', dash(d.attempts)],
        ['Last answer', dash(d.last_status)],
        ['Last error', d.last_error ? String(d.last_error) : undefined],
        ['Next attempt', d.next_attempt_at ? time(d.next_attempt_at) : undefined],
        ['Created', time(d.created_at)],
        ['Updated', time(d.updated_at)],
      ]),
      d.request ? el('details', { 'data-key': 'request:' + d.id }, el('summary', {}, 'Request as stored'), requestBlock(d.request)) : null,
      el('div', { class: 'actions' },
        button('Retry', { class: 'retry-button', 'aria-describedby': headingId, 'data-key': 'retry:' + d.id },
          action(path + '/retry', 'Delivery ' + d.id + ' queued to be sent again.', 'Could not retry the delivery', refresh)),
        d.status === 'pending'
          ? button('Cancel', { class: 'cancel-button', 'aria-describedby': headingId, 'data-key': 'cancel:' + d.id },
            action(path + '/cancel', 'Delivery ' + d.id + ' cancelled.', 'Could not cancel the delivery', refresh))
          : null,
        toggle),
      el('div', { id: attemptsId, class: 'attempts', hidden: !expanded }));
  }

  async function loadAttempts(gen, deliveryId) {
    const box = $('attempts-' + deliveryId);
    if (!box) return;
    box.hidden = false;
    if (!box.childElementCount) box.append(hint('Loading attempts…'));
    const [err, answer] = await settle(api('GET', '/api/deliveries/' + enc(deliveryId)));
    if (err) return alive(gen) && sayError(err, 'Could not load the attempts');
    const current = $('attempts-' + deliveryId);
    if (!alive(gen) || !current || !state.expanded.has(deliveryId)) return;
    const attempts = answer.attempts || [];
    swap(current, attempts.length ? el('ol', { class: 'attempt-list' }, attempts.map(attemptItem)) : el('p', { class: 'empty' }, 'No attempts yet'));
  }

  function attemptItem(a) {
    const answered = a.status !== null && a.status !== undefined;
    return el('li', { class: 'attempt' },
      heading(5, 'Attempt ' + dash(a.number) + (a.counted === false ? ' (not counted: throttled)' : '')),
      defs([
        ['Started', time(a.started_at)],
        ['Duration', dash(a.duration_ms) + ' ms'],
        ['Answer', answered ? String(a.status) : 'no answer'],
        ['Error', a.error ? String(a.error) : undefined],
      ]),
      heading(6, 'Request as sent'),
      requestBlock({ method: a.request_method, url: a.request_url, headers: a.request_headers, body: a.request_body }),
      heading(6, answered ? 'Answer: ' + a.status : 'Answer: none'),
      answered ? [headerList(a.response_headers), bodyBlock(a.response_body)] : null);
  }

  // ---- Replay -------------------------------------------------------------------------

  function replaySection(gen, id) {
    const url = '/api/events/' + enc(id) + '/replay';
    const preview = el('div', { id: 'replay-preview', class: 'replay-preview', hidden: true });
    const start = button('Replay…', { id: 'replay-button', 'aria-controls': 'replay-preview' });
    const close = () => {
      preview.hidden = true;
      preview.replaceChildren();
      start.focus();
    };
    const cancel = (text) => button(text, { class: 'replay-cancel' }, close);
    start.addEventListener('click', async () => {
      preview.hidden = false;
      preview.replaceChildren(hint('Comparing with the config serving now…'));
      const [err, answer] = await settle(api('POST', url, { dry_run: true }));
      if (!alive(gen)) return;
      if (err) {
        preview.replaceChildren(el('p', { class: 'message error' }, describeError(err, 'The replay could not be prepared')), cancel('Close'));
        return sayError(err, 'The replay could not be prepared');
      }
      const confirm = button('Replay now', { id: 'replay-confirm' });
      confirm.addEventListener('click', async () => {
        if (confirm.getAttribute('aria-disabled') === 'true') return;
        confirm.setAttribute('aria-disabled', 'true');
        const [failed, done] = await settle(api('POST', url, { dry_run: false }));
        confirm.removeAttribute('aria-disabled');
        if (failed) return sayError(failed, 'Nothing was replayed');
        if (!alive(gen)) return;
        replayed(done);
        preview.hidden = true;
        preview.replaceChildren();
        $('replay-new-event')?.focus();
      });
      preview.replaceChildren();
      append(preview, [heading(4, 'Replay preview', { tabindex: '-1', id: 'replay-preview-title' }), comparison(answer),
        el('div', { class: 'actions' }, confirm, cancel('Cancel'))]);
      $('replay-preview-title').focus();
    });
    return el('section', { class: 'replay', 'aria-labelledby': 'replay-title' },
      heading(3, 'Replay', { id: 'replay-title' }),
      hint('Runs the stored event through the config serving now, as a new event. The preview sends nothing; only “Replay now” does.'),
      start, preview);
  }

  function replayed(answer) {
    const id = answer && answer.id;
    if (!id) return say('Replayed.');
    const others = Array.isArray(answer.ids) ? answer.ids.filter((other) => other !== id) : [];
    say('Replayed as event ', el('a', { id: 'replay-new-event', href: '#/events/' + enc(id) }, String(id)),
      others.length ? ['; also as ', others.map((other, i) => [i ? ', ' : '', el('a', { href: '#/events/' + enc(other) }, String(other))])] : null);
  }

  function comparison(answer) {
    const list = (value) => (Array.isArray(value) ? value : []);
    const routes = list(answer.routes);
    const notMatched = list(answer.not_matched);
    return [
      el('p', {}, el('strong', {}, 'Verification: '), dash(answer.verification)),
      el('p', { id: 'replay-routes' }, routes.length ? 'Routes that match now: ' + routes.join(', ') : 'No route matches the event now: there is nothing to replay.'),
      notMatched.length ? [el('p', {}, 'Not matched now:'), el('ul', { class: 'not-matched' }, notMatched.map((n) => el('li', {}, el('strong', {}, dash(n.route)), ': ', dash(n.why_not))))] : null,
      el('p', {}, answer.changed ? 'Something would be sent differently than the first time.' : 'Every target would send what it was sent the first time.'),
      list(answer.targets).map(targetComparison),
    ];
  }

  function targetComparison(t) {
    const changes = Array.isArray(t.changes) ? t.changes : [];
    const name = dash(t.route) + ' → ' + dash(t.target);
    const value = (v) => {
      if (v === undefined) return el('span', { class: 'hint' }, '(none)');
      if (v !== null && typeof v === 'object') return el('pre', { class: 'body' }, JSON.stringify(v, null, 2));
      return code(typeof v === 'string' ? v : JSON.stringify(v));
    };
    return el('section', { class: 'target-comparison' },
      heading(5, name),
      t.first_delivery ? hint('First delivery ' + dash(t.first_delivery.id) + ': ' + dash(t.first_delivery.status)) : null,
      t.first === null ? el('p', {}, 'New target: nothing was sent to it the first time.') : null,
      t.now === null && !t.skipped && !t.error ? el('p', {}, 'Nothing would be sent to this target now.') : null,
      t.skipped ? el('p', {}, 'Skipped now: ', String(t.skipped)) : null,
      t.error ? el('p', { class: 'message error' }, 'Would fail to render: ', String(t.error)) : null,
      changes.length
        ? table('Changes for ' + name, ['Path', 'First time', 'Now'], changes.map((c) => [
          [code(c.path ? String(c.path) : '(whole request)'), c.secret ? ' (a credential changed)' : null],
          c.secret ? '***' : value(c.first),
          c.secret ? '***' : value(c.now),
        ]), { class: 'responsive changes' })
        : el('p', { class: 'no-change' }, 'no change'));
  }

  // ---- Targets ------------------------------------------------------------------------

  const TARGET_COLUMNS = ['Route', 'Target', 'State', 'Failures', 'Next probe', 'Queued', 'Max queued', 'Actions'];
  const STATE_TEXT = { closed: 'closed (sending)', open: 'open (holding)', half_open: 'half-open (probing)', paused: 'paused' };
  const STATE_KIND = { closed: 'ok', open: 'bad', half_open: 'wait', paused: 'muted' };

  function viewTargets(gen) {
    setView('Targets',
      hint('Circuit breakers and paused targets. An open target holds its deliveries until its next probe; a paused one until it is resumed.'),
      el('div', { id: 'targets-results' }, hint('Loading…')));
    loadTargets(gen);
  }

  async function loadTargets(gen) {
    const [err, answer] = await settle(api('GET', '/api/targets'));
    if (!alive(gen)) return;
    if (err) return sayError(err, 'Could not list targets');
    const items = answer.items || [];
    if (!items.length) return swap($('targets-results'), el('p', { class: 'empty' }, 'No targets'));
    swap($('targets-results'), table('Targets', TARGET_COLUMNS, items.map((t) => targetCells(gen, t)), { id: 'targets-table' }));
  }

  function targetCells(gen, t) {
    const key = t.route + '/' + t.target;
    const path = '/api/targets/' + enc(t.route) + '/' + enc(t.target) + '/';
    const refresh = () => alive(gen) && loadTargets(gen);
    const paused = t.state === 'paused';
    const stateCell = [
      badge(STATE_TEXT[t.state] || dash(t.state), STATE_KIND[t.state] || 'muted'),
      paused && t.paused_reason ? el('span', { class: 'detail' }, 'Reason: ', String(t.paused_reason)) : null,
      paused && t.paused_at ? el('span', { class: 'detail' }, 'Since ', time(t.paused_at)) : null,
    ];
    const actions = el('div', { class: 'actions' },
      !paused ? button('Pause', { class: 'pause-button', 'data-key': 'pause:' + key, 'aria-label': 'Pause ' + key }, action(path + 'pause', 'Paused ' + key + '.', 'Could not pause ' + key, refresh)) : null,
      paused || t.state === 'open'
        ? button('Resume', { class: 'resume-button', 'data-key': 'resume:' + key, 'aria-label': 'Resume ' + key }, action(path + 'resume', 'Resumed ' + key + '.', 'Could not resume ' + key, refresh))
        : null);
    return [dash(t.route), dash(t.target), stateCell, dash(t.failures), t.next_probe ? time(t.next_probe) : '—', dash(t.queued), dash(t.max_queued), actions];
  }

  // ---- Routes -------------------------------------------------------------------------

  const ROUTE_COLUMNS = ['Name', 'Path', 'Methods', 'Source', 'Respond', 'Targets'];

  function viewRoutes(gen) {
    const routeSelect = el('select', { id: 'render-route', name: 'route', required: true });
    const area = (id, rows) => el('textarea', { id, name: id.slice(7), rows, spellcheck: 'false', autocomplete: 'off' });
    const form = el('form', { id: 'render-form', class: 'render-form', 'aria-labelledby': 'render-title' },
      field('render-route', 'Route', routeSelect),
      field('render-path', 'Path (optional)', el('input', { id: 'render-path', name: 'path', type: 'text', spellcheck: 'false', autocomplete: 'off' })),
      field('render-headers', 'Headers, one “Name: value” per line', area('render-headers', 4)),
      field('render-body', 'Body (JSON or text)', area('render-body', 8)),
      el('div', { class: 'actions' }, el('button', { type: 'submit' }, 'Render')));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      renderSample(gen);
    });
    setView('Routes',
      el('div', { id: 'routes-results' }, hint('Loading…')),
      el('section', { class: 'playground', 'aria-labelledby': 'render-title' },
        heading(3, 'Render playground', { id: 'render-title' }),
        hint('Shows whether a sample request matches a route and the exact requests it would send. Nothing is sent.'),
        form,
        el('div', { id: 'render-result', class: 'render-result' })));
    loadRoutes(gen, routeSelect);
  }

  async function loadRoutes(gen, routeSelect) {
    const routes = await fillRouteSelect(gen, routeSelect, true);
    if (!alive(gen)) return;
    const placeholder = () => {
      const chosen = routes.find((r) => String(r.name) === routeSelect.value);
      $('render-path').setAttribute('placeholder', chosen && chosen.path ? String(chosen.path) : '');
    };
    routeSelect.addEventListener('change', placeholder);
    placeholder();
    if (!routes.length) return swap($('routes-results'), el('p', { class: 'empty' }, 'No routes'));
    const rows = routes.map((r) => [
      [el('strong', {}, dash(r.name)), r.final ? ' (final)' : null, r.origin ? el('span', { class: 'detail' }, 'from ' + r.origin + (r.file ? ': ' + r.file : '')) : null],
      code(dash(r.path)),
      Array.isArray(r.methods) && r.methods.length ? r.methods.join(', ') : 'any',
      dash(r.source),
      dash(r.respond),
      Array.isArray(r.targets) && r.targets.length
        ? el('ul', { class: 'plain' }, r.targets.map((t) => el('li', {}, el('strong', {}, dash(t.name)), ': ', code(dash(t.method) + ' ' + dash(t.url)))))
        : 'none',
    ]);
    swap($('routes-results'), table('Routes', ROUTE_COLUMNS, rows, { id: 'routes-table' }));
  }

  function parseHeaders(text) {
    const headers = {};
    text.split(/\r?\n/).forEach((raw, i) => {
      const line = raw.trim();
      if (!line) return;
      const colon = line.indexOf(':');
      if (colon <= 0) throw new Error('line ' + (i + 1) + ' is not “Name: value”');
      headers[line.slice(0, colon).trim()] = line.slice(colon + 1).trim();
    });
    return headers;
  }

  async function renderSample(gen) {
    const name = $('render-route').value;
    const result = $('render-result');
    if (!name) return sayError('choose a route first');
    const sample = {};
    const path = $('render-path').value.trim();
    if (path) sample.path = path;
    try {
      sample.headers = parseHeaders($('render-headers').value);
    } catch (err) {
      $('render-headers').focus();
      return sayError(err, 'Headers');
    }
    const body = $('render-body').value;
    if (body.trim()) sample.body = parseJSON(body)?.value ?? body;
    result.replaceChildren(hint('Rendering…'));
    const [err, answer] = await settle(api('POST', '/api/routes/' + enc(name) + '/render', sample));
    if (!alive(gen)) return;
    if (err) {
      result.replaceChildren(el('p', { class: 'message error' }, describeError(err, 'Could not render')));
      return sayError(err, 'Could not render');
    }
    result.replaceChildren();
    append(result, [heading(4, 'Result'), renderSummary(name, answer), heading(4, 'Raw answer'), el('pre', { class: 'body raw', id: 'render-raw' }, JSON.stringify(answer, null, 2))]);
    say('Rendered ' + name + (answer && answer.matched === false ? ': it does not match.' : '.'));
  }

  function renderSummary(name, answer) {
    if (!answer || typeof answer !== 'object') return el('p', {}, 'No summary: see the raw answer.');
    const list = [answer.requests, answer.targets].find(Array.isArray) || [];
    const verifyErrors = Array.isArray(answer.verify_errors) ? answer.verify_errors : [];
    const routeName = dash(answer.route || name);
    return el('div', { class: 'render-summary' },
      el('p', { id: 'render-matched' }, answer.matched ? 'Matched: route ' + routeName + ' takes this request.' : 'Not matched: route ' + routeName + ' would not take this request.'),
      !answer.matched && answer.why_not ? el('p', { id: 'render-why-not' }, 'Why not: ', String(answer.why_not)) : null,
      verifyErrors.length ? [el('p', {}, 'Verification would fail (the sender would get 401):'), el('ul', {}, verifyErrors.map((e) => el('li', {}, String(e))))] : null,
      answer.event !== undefined ? el('p', {}, 'Event: ', dash(answer.event)) : null,
      list.length ? list.map(renderedTarget) : el('p', {}, 'No request would be sent.'));
  }

  function renderedTarget(item) {
    if (!item || typeof item !== 'object') return el('pre', { class: 'body' }, JSON.stringify(item));
    const request = item.request && typeof item.request === 'object' ? item.request : item;
    return el('section', { class: 'rendered-target' },
      heading(5, 'Target ' + (item.target || request.target || item.name || '(unnamed)')),
      item.skipped ? el('p', {}, 'Skipped: ', String(item.skipped)) : null,
      item.error ? el('p', { class: 'message error' }, 'Would fail to render: ', String(item.error)) : null,
      request.url || request.method ? requestBlock(request) : null);
  }

  // ---- live updates (Server-Sent Events over fetch, so the token stays in a header) ---

  let stream = null; // {controller} while connecting or connected
  let streamTimer = null;
  let streamDelay = 1000;
  let wasLive = false;

  function setLive(live) {
    const indicator = $('live');
    indicator.textContent = live ? 'live' : 'offline';
    indicator.dataset.state = live ? 'live' : 'offline';
    indicator.title = live ? 'Receiving live updates' : 'Not receiving live updates; reconnecting';
  }

  function stopStream() {
    clearTimeout(streamTimer);
    if (stream) stream.controller.abort();
    stream = null;
    setLive(false);
  }

  async function startStream() {
    if (stream) return;
    clearTimeout(streamTimer);
    const me = { controller: new AbortController() };
    stream = me;
    try {
      const response = await fetch('/api/stream', { headers: authHeaders(), signal: me.controller.signal, cache: 'no-store', credentials: 'omit' });
      if (response.status === 401) return showLogin('the token was refused');
      if (!response.ok || !response.body) throw new Error('the stream answered ' + response.status);
      setLive(true);
      streamDelay = 1000;
      if (wasLive) refreshSoon(); // things may have happened while offline
      wasLive = true;
      await readFrames(response.body.getReader(), onFrame);
    } catch {
      /* reconnect below, unless stopped */
    }
    if (stream !== me) return; // stopped, or replaced
    stream = null;
    setLive(false);
    if (!state.signedIn) return;
    streamTimer = setTimeout(startStream, streamDelay);
    streamDelay = Math.min(streamDelay * 2, 30000);
  }

  /** Reads SSE frames (`event:` and `data:` lines, a blank line ends one, `:` comments). */
  async function readFrames(reader, handle) {
    const decoder = new TextDecoder();
    let buffer = '';
    let name = '';
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, '');
        buffer = buffer.slice(end + 1);
        if (line === '') {
          const payload = data.length ? parseJSON(data.join('\n')) : null;
          if (payload && payload.value && typeof payload.value === 'object') handle(name || 'message', payload.value);
          name = '';
          data = [];
        } else if (!line.startsWith(':')) {
          const colon = line.indexOf(':');
          const fieldName = colon < 0 ? line : line.slice(0, colon);
          const fieldValue = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (fieldName === 'event') name = fieldValue;
          else if (fieldName === 'data') data.push(fieldValue);
        }
      }
    }
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  const refreshEvents = debounce((gen) => alive(gen) && state.view.name === 'events' && !state.eventsPaged && loadEvents(gen, false), 300);
  const refreshEvent = debounce((gen, id) => alive(gen) && state.view.name === 'event' && state.view.id === id && loadEvent(gen, id, false), 300);

  function onFrame(name, data) {
    if (!state.signedIn || !state.view) return;
    if (name === 'event' && state.view.name === 'events') refreshEvents(state.gen);
    else if (name === 'delivery' && state.view.name === 'event' && data.event_id === state.view.id) refreshEvent(state.gen, state.view.id);
    else if (name === 'changed') refreshSoon(); // a change in bulk, or this reader fell behind
  }

  function refreshSoon() {
    if (!state.signedIn || !state.view) return;
    if (state.view.name === 'events') refreshEvents(state.gen);
    else if (state.view.name === 'event') refreshEvent(state.gen, state.view.id);
  }

  // ---- start --------------------------------------------------------------------------

  function start() {
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      setToken($('token-input').value.trim());
      $('status').replaceChildren();
      checkToken(true);
    });
    $('sign-out').addEventListener('click', signOut);
    document.addEventListener('toggle', (e) => {
      const key = e.target instanceof HTMLDetailsElement && e.target.getAttribute('data-key');
      if (key) (e.target.open ? openDetails.add(key) : openDetails.delete(key));
    }, true);
    document.querySelector('.skip-link').addEventListener('click', (e) => {
      e.preventDefault(); // keep the route in the hash
      $('main').focus();
    });
    window.addEventListener('hashchange', () => {
      if (takeTokenFromHash()) return checkToken(true);
      if (location.hash && !location.hash.startsWith('#/')) return; // an in-page anchor
      route(true);
    });
    if (!takeTokenFromHash()) {
      try {
        state.token = sessionStorage.getItem(TOKEN_KEY) || '';
      } catch {
        state.token = '';
      }
    }
    checkToken(false);
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
