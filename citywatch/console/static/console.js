/* citywatch operator console: countdowns and live updates (server-sent events). Served as a file:
   the Content-Security-Policy allows no inline script. Rows arrive rendered by the server (escaped
   there, in the session's language); this script only places them. */
(function () {
  "use strict";
  var body = document.body;
  var skew = (parseFloat(body.getAttribute("data-now")) || Date.now() / 1000) - Date.now() / 1000;
  var RANK = { info: 0, warning: 1, critical: 2 };

  function pad(n) { return n < 10 ? "0" + n : String(n); }

  function countdown(el, now) {
    var due = parseFloat(el.getAttribute("data-deadline"));
    if (!due) { return; }
    var left = Math.round(due - now);
    var over = left < 0;
    var s = Math.abs(left);
    var text = (s >= 86400 ? Math.floor(s / 86400) + "d " : "") + Math.floor((s % 86400) / 3600) + ":" +
      pad(Math.floor((s % 3600) / 60)) + ":" + pad(s % 60);
    el.textContent = over ? "-" + text + " " + body.getAttribute("data-overdue") : text;
    el.classList.toggle("overdue", over);
    el.classList.toggle("soon", !over && left < 3600);
  }

  function tick() {
    var now = Date.now() / 1000 + skew;
    var els = document.querySelectorAll(".countdown[data-deadline]");
    for (var i = 0; i < els.length; i++) { countdown(els[i], now); }
  }

  function sortKey(row) {
    var d = parseFloat(row.getAttribute("data-deadline"));
    return [isNaN(d) ? Infinity : d, -(RANK[row.getAttribute("data-severity")] || 0), row.getAttribute("data-id")];
  }

  function before(a, b) {
    var x = sortKey(a), y = sortKey(b);
    for (var i = 0; i < x.length; i++) {
      if (x[i] < y[i]) { return true; }
      if (x[i] > y[i]) { return false; }
    }
    return false;
  }

  function parseRow(html) {
    var tpl = document.createElement("template");
    tpl.innerHTML = html.trim();  /* server-rendered, escaped there; scripts never run from here */
    return tpl.content.querySelector("tr");
  }

  function refreshEmpty(table) {
    var empty = document.getElementById(table.id + "-empty");
    if (empty) { empty.hidden = table.tBodies[0].rows.length > 0; }
  }

  function upsert(tableId, prefix, data) {
    var table = document.getElementById(tableId);
    if (!table) { return; }
    var row = parseRow(data.html);
    if (!row) { return; }
    var old = document.getElementById(prefix + data.id);
    if (old) { old.remove(); }
    var tbody = table.tBodies[0];
    var place = null;
    for (var i = 0; i < tbody.rows.length; i++) {
      if (before(row, tbody.rows[i])) { place = tbody.rows[i]; break; }
    }
    tbody.insertBefore(row, place);
    row.classList.add("fresh");
    var limit = parseInt(table.getAttribute("data-limit"), 10) || 300;
    while (tbody.rows.length > limit) { tbody.deleteRow(tbody.rows.length - 1); }
    refreshEmpty(table);
    tick();
  }

  function removeRow(data) {
    var row = document.getElementById((data.type === "incident" ? "incident-" : "alert-") + data.id);
    if (row) {
      var table = row.closest("table");
      row.remove();
      if (table) { refreshEmpty(table); }
    }
  }

  function placeDevice(data) {
    var svg = document.getElementById("city-map");
    if (!svg) { return; }
    var dot = document.getElementById("dev-" + data.id);
    if (!dot && data.severity && data.lat !== null && data.lon !== null && svg.hasAttribute("data-kx")) {
      var num = function (name) { return parseFloat(svg.getAttribute("data-" + name)); };
      var x = num("ox") + (data.lon - num("min-lon")) * num("kx") * num("scale");
      var y = num("oy") + (num("max-lat") - data.lat) * num("scale");
      dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      dot.setAttribute("id", "dev-" + data.id);
      dot.setAttribute("cx", x.toFixed(1));
      dot.setAttribute("cy", y.toFixed(1));
      dot.setAttribute("data-device", data.id);
      var title = document.createElementNS("http://www.w3.org/2000/svg", "title");
      title.textContent = data.title;
      dot.appendChild(title);
      svg.appendChild(dot);
    }
    if (!dot) { return; }
    dot.setAttribute("class", "dev" + (data.severity ? " sev-" + data.severity : ""));
    dot.setAttribute("r", data.severity ? "7" : "4");
    if (data.severity) { svg.appendChild(dot); }  /* alerting dots on top */
  }

  function signIn() {
    window.location.href = body.getAttribute("data-signin") + "?next=" + encodeURIComponent(
      window.location.pathname + window.location.search);
  }

  function connect(url) {
    var source = new EventSource(url);
    var on = function (name, handler) {
      source.addEventListener(name, function (e) { handler(JSON.parse(e.data)); });
    };
    source.onopen = function () { body.setAttribute("data-live", "open"); };
    source.onerror = function () {
      body.setAttribute("data-live", source.readyState === EventSource.CLOSED ? "off" : "retrying");
    };
    on("alert", function (d) { upsert("alerts", "alert-", d); });
    on("incident", function (d) { upsert("incidents", "incident-", d); });
    on("remove", removeRow);
    on("device", placeDevice);
    on("changed", function () {
      var notice = document.getElementById("changed");
      if (notice) { notice.hidden = false; }
    });
    on("reload", function () { source.close(); window.location.reload(); });
    on("signed-out", function () { source.close(); signIn(); });
    on("seq", function () {});
    return source;
  }

  document.addEventListener("DOMContentLoaded", function () {
    tick();
    window.setInterval(tick, 1000);
    var language = document.getElementById("language");
    if (language) {
      language.addEventListener("change", function () { language.form.submit(); });
    }
    var url = body.getAttribute("data-events");
    if (url) {
      var source = connect(url);
      window.addEventListener("pagehide", function () { source.close(); });  /* free the server's stream now */
    }
  });
}());
