// UpGlobe's dashboard: tables and plots kept live by server-sent events (one message a second).
// Data goes into the page with textContent only, never as HTML.
(function () {
  'use strict';
  const token = new URLSearchParams(location.search).get('token');
  const withToken = (url) => (token ? url + (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token) : url);
  for (const a of document.querySelectorAll('a[data-nav], td a')) a.href = withToken(a.getAttribute('href'));

  function listen(url, onData) {
    const live = document.getElementById('live');
    const source = new EventSource(withToken(url));
    source.onopen = () => { live.textContent = 'live'; };
    source.onerror = () => { live.textContent = 'reconnecting…'; };
    source.onmessage = (message) => {
      const data = JSON.parse(message.data);
      if (data.error) { live.textContent = data.error; return; }
      live.textContent = 'live · ' + new Date().toLocaleTimeString();
      onData(data);
    };
  }

  function row(cells) {
    const tr = document.createElement('tr');
    for (const value of cells) {
      const td = document.createElement('td');
      if (value instanceof Node) td.appendChild(value); else td.textContent = value === null || value === undefined ? '' : String(value);
      tr.appendChild(td);
    }
    return tr;
  }

  function link(href, text) {
    const a = document.createElement('a');
    a.href = withToken(href);
    a.textContent = text;
    return a;
  }

  function progress(done, total) {
    const span = document.createElement('span');
    const bar = document.createElement('progress');
    bar.max = Math.max(total, 1);
    bar.value = done;
    span.appendChild(bar);
    span.appendChild(document.createTextNode(' ' + done + '/' + total));
    return span;
  }

  function overview() {
    listen('/events', (data) => {
      const jobs = document.querySelector('#jobs tbody');
      if (jobs) {
        jobs.replaceChildren(...data.jobs.map((j) => {
          const tr = row([link('/jobs/' + j.id, j.id), j.workflow, j.name, j.kind, j.state, progress(j.verified, j.total),
            j.final, j.running, j.failures, j.waiting || j.reason || '']);
          tr.children[4].className = 'state ' + j.state;
          return tr;
        }));
      }
      const workers = document.querySelector('#workers tbody');
      if (workers) workers.replaceChildren(...data.workers.map(row));
      const payments = document.querySelector('#payments tbody');
      if (payments) payments.replaceChildren(...data.payments.map(row));
    });
  }

  function plot(id, series) {
    const element = document.getElementById(id);
    if (!element) return null;
    const options = {
      width: Math.max(element.clientWidth, 600), height: 220,
      scales: { x: { time: false } },
      series: [{ label: 'step' }].concat(series.map(([label, stroke]) => ({ label, stroke, width: 2 }))),
    };
    return { element, chart: new uPlot(options, [[]].concat(series.map(() => [])), element) };
  }

  function job(id) {
    const thermo = { step: [], temp: [], pe: [], ke: [], etotal: [], press: [] };
    const plots = [
      [plot('plot-temp', [['temperature', '#c00']]), ['temp']],
      [plot('plot-energy', [['potential', '#00c'], ['kinetic', '#c00'], ['total', '#000']]), ['pe', 'ke', 'etotal']],
      [plot('plot-press', [['pressure', '#080']]), ['press']],
    ];
    const set = (id, value) => { const e = document.getElementById(id); if (e) e.textContent = value; };
    listen('/jobs/' + id + '/events', (data) => {
      const chunks = document.querySelector('#chunks tbody');
      if (data.reset) {
        for (const key in thermo) thermo[key] = [];
        chunks.replaceChildren();
      }
      for (const key in thermo) thermo[key].push(...data.thermo[key]);
      for (const [p, keys] of plots) {
        if (!p) continue;
        p.chart.setData([thermo.step].concat(keys.map((k) => thermo[k])));
        p.element.dataset.points = thermo.step.length;
      }
      const s = data.status;
      set('state', s.state);
      document.getElementById('state').className = 'state ' + s.state;
      set('verified', s.verified);
      set('total', s.total);
      set('final', s.final);
      set('running', s.running);
      set('failures', s.failures);
      set('waiting', s.waiting ? '· ' + s.waiting : (s.reason ? '· ' + s.reason : ''));
      for (const c of data.chunks) {
        const tr = row([c.index, c.finality, c.agreeing.join(', '), c.disagreeing.join(', ')]);
        if (c.finality === 'provisional') tr.className = 'provisional';
        chunks.appendChild(tr);
      }
      document.querySelector('#failed tbody').replaceChildren(...data.failures.map((f) => row([f.chunk, f.worker, f.reason])));
      document.querySelector('#events tbody').replaceChildren(...data.events.map((e) => row([e.time_s.toFixed(1) + ' s', e.chunk, e.worker, e.what])));
    });
  }

  window.upglobe = { overview, job };
})();
