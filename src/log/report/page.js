"use strict";
// Draws the report page from the report's JSON in #report-data: the window
// line, the table rows and the charts of the encrypted and verified shares.
// Text from the log only ever goes into textContent and attributes.
(() => {
  const data = JSON.parse(document.getElementById("report-data").textContent);
  const SVG = "http://www.w3.org/2000/svg";

  // part / whole in tenths of a percent, rounded half up, in whole numbers
  // as the text report does; null when there is nothing to divide by.
  const tenths = (part, whole) =>
    whole > 0 ? Math.floor((2000 * part + whole) / (2 * whole)) : null;
  const percent = (t) =>
    t === null ? "-" : Math.floor(t / 10) + "." + (t % 10) + "%";

  // An age in its two largest units, as the text report writes it.
  const age = (s) => {
    const d = Math.floor(s / 86400);
    const h = Math.floor(s / 3600) % 24;
    const m = Math.floor(s / 60) % 60;
    if (d > 0) return d + "d " + h + "h";
    if (h > 0) return h + "h " + m + "m";
    if (m > 0) return m + "m " + (s % 60) + "s";
    return s + "s";
  };

  const make = (ns, tag, attrs, text) => {
    const e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  };
  const html = (tag, attrs, text) => make(null, tag, attrs, text);
  const svg = (tag, attrs, text) => make(SVG, tag, attrs, text);

  // The table's columns after the domain: field name, value, and whether
  // a value above zero is a problem.
  const COLUMNS = [
    ["messages", (p) => p.messages, false],
    ["deliveries", (p) => p.deliveries, false],
    ["delivered", (p) => p.delivered, false],
    ["encrypted", (p) => percent(tenths(p.encrypted, p.delivered)), false],
    ["verified", (p) => percent(tenths(p.verified, p.delivered)), false],
    ["plaintext-fallbacks", (p) => p.plaintext_fallbacks, true],
    ["held", (p) => p.held, true],
    ["oldest-held", (p) => (p.oldest_held ? age(p.oldest_held.age_seconds) : "-"), false],
    ["violations", (p) => p.violations, true],
    ["policy-unreachable", (p) => p.policy_unreachable, true],
    ["undecided", (p) => p.undecided, false],
  ];

  const row = (name, p, attrs) => {
    const tr = html("tr", attrs);
    tr.appendChild(html("th", { scope: "row", "data-field": "domain" }, name));
    for (const [field, value, problem] of COLUMNS) {
      const v = value(p);
      const td = html("td", { "data-field": field }, v);
      if (problem && v > 0) td.className = "problem";
      if (field === "oldest-held" && p.oldest_held) {
        const o = p.oldest_held;
        td.title = o.recipient + " (queue id " + o.queue_id + "), held since " + o.since;
      }
      tr.appendChild(td);
    }
    return tr;
  };

  const every = data.bucket === "day" ? "daily" : "hourly";
  document.getElementById("window").textContent =
    data.since + " .. " + data.until + ": " + data.records +
    " delivery records, " + data.domains.length + " domains, " + every + " buckets";

  document.getElementById("totals").appendChild(
    row("all domains", data.totals, { "data-total": "" }));
  const domains = document.getElementById("domains");
  for (const d of data.domains) {
    domains.appendChild(d.domain === null
      ? row("(no domain)", d, { "data-domain": "" })
      : row(d.domain, d, { "data-domain": d.domain }));
  }

  // A bucket's label: day and hour, or the day alone.
  const label = (start) =>
    data.bucket === "day" ? start.slice(0, 10) : start.slice(5, 10) + " " + start.slice(11, 16);

  const chart = (id, part) => {
    const box = document.getElementById(id);
    const W = 760, H = 240, L = 52, R = 44, T = 14, B = 42;
    box.setAttribute("viewBox", "0 0 " + W + " " + H);
    const n = data.series.length;
    const x = (i) => L + (n > 1 ? (i * (W - L - R)) / (n - 1) : (W - L - R) / 2);
    const y = (t) => T + ((H - T - B) * (1000 - t)) / 1000;
    for (const g of [0, 250, 500, 750, 1000]) {
      box.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(g), y2: y(g) }));
      box.appendChild(svg("text", { class: "axis", x: L - 6, y: y(g) + 4, "text-anchor": "end" },
        g / 10 + "%"));
    }
    const step = Math.max(1, Math.ceil(n / 8));
    for (let i = 0; i < n; i += step) {
      box.appendChild(svg("text", { class: "axis", x: x(i), y: H - B + 18, "text-anchor": "middle" },
        label(data.series[i].start)));
    }
    let path = "";
    let pen = false;
    const points = [];
    data.series.forEach((b, i) => {
      const t = tenths(b[part], b.delivered);
      if (t === null) {
        pen = false;
        return;
      }
      path += (pen ? "L" : "M") + x(i).toFixed(1) + " " + y(t).toFixed(1) + " ";
      pen = true;
      const dot = svg("circle", {
        class: "point", cx: x(i).toFixed(1), cy: y(t).toFixed(1), r: 3.5,
        "data-start": b.start, "data-share": percent(t),
        "data-count": b[part] + "/" + b.delivered,
      });
      dot.appendChild(svg("title", {},
        label(b.start) + ": " + percent(t) + " (" + b[part] + " of " + b.delivered + ")"));
      points.push(dot);
    });
    if (path !== "") box.appendChild(svg("path", { class: "line", d: path.trim() }));
    for (const p of points) box.appendChild(p);
    if (points.length === 0) {
      box.appendChild(svg("text", { class: "axis", x: W / 2, y: H / 2, "text-anchor": "middle" },
        "no mail delivered in the window"));
    }
    box.setAttribute("data-points", points.length);
  };
  chart("chart-encrypted", "encrypted");
  chart("chart-verified", "verified");

  document.getElementById("report").setAttribute("data-rendered", "true");
})();
