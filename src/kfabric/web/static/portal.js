// kfabric portal: live refresh of page fragments, charts, and the browser's time zone. No other library but
// Plotly (served by kfabric from the plotly package); every request goes to this server.
(function () {
  "use strict";

  // The browser's time zone, for dates on the next page (the preferences form overrides it).
  function rememberZone() {
    try {
      var zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
      // IANA names (Asia/Seoul) are cookie-safe as they are; anything else is left out
      if (zone && /^[A-Za-z0-9_+\-\/]{1,64}$/.test(zone) && document.cookie.indexOf("kfabric_tz=") === -1) {
        document.cookie = "kfabric_tz=" + zone + "; path=/; max-age=31536000; samesite=lax";
        var stored = document.cookie.indexOf("kfabric_tz=") !== -1;  // cookies may be off: then never reload
        if (stored && zone !== "UTC" && document.body.getAttribute("data-zone") === "UTC") {
          // the first page was rendered in UTC: show it again in the browser's zone (once)
          window.location.reload();
        }
      }
    } catch (e) { /* no Intl: dates stay in UTC, which the page says */ }
  }

  // Elements with data-refresh="URL" data-every="SECONDS" are replaced by URL's HTML every so often, while the
  // page is visible and no control inside them has the focus (so typing or a keyboard user is never disturbed).
  function refresher(el) {
    var every = Math.max(1, parseInt(el.getAttribute("data-every") || "5", 10)) * 1000;
    var busy = false;
    function tick() {
      if (el.getAttribute("data-stop") === "1") return;
      if (document.hidden || busy || el.contains(document.activeElement)) return schedule();
      busy = true;
      fetch(el.getAttribute("data-refresh"), { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (r) {
          if (r.redirected || r.status === 401) { window.location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html !== null && html !== undefined) {
            el.innerHTML = html;
            drawCharts(el);
            if (el.querySelector("[data-final='1']")) el.setAttribute("data-stop", "1");
          }
        })
        .catch(function () { /* the server is away: try again later */ })
        .then(function () { busy = false; schedule(); });
    }
    function schedule() { window.setTimeout(tick, every); }
    schedule();
  }

  function drawCharts(root) {
    var charts = root.querySelectorAll(".chart[data-figure]");
    if (!charts.length || !window.Plotly) return;
    charts.forEach(function (el) {
      var fig = JSON.parse(el.getAttribute("data-figure"));
      window.Plotly.newPlot(el, fig.data, fig.layout, { responsive: true, displaylogo: false });
    });
  }

  // Focus the first problem a form reports, so screen readers and keyboard users land on it.
  function focusProblem() {
    var problem = document.getElementById("form-problem");
    if (problem) problem.focus();
  }

  document.addEventListener("DOMContentLoaded", function () {
    rememberZone();
    document.querySelectorAll("[data-refresh]").forEach(refresher);
    drawCharts(document);
    focusProblem();
  });
})();
