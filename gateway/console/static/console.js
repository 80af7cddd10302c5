// Live console pages: an EventSource on /console/events says which warnings changed; the page
// refetches its live fragment (at most every MIN_GAP_MS, never two at once) and swaps it in.
(function () {
  "use strict";
  var MIN_GAP_MS = 300;
  var RETRY_MS = 2000;
  var live = document.getElementById("live");
  var banner = document.getElementById("conn");
  var status = document.getElementById("updated");
  if (!live || !window.EventSource) {
    return;
  }
  var url = live.getAttribute("data-fragment");
  var mine = live.getAttribute("data-warning");
  var busy = false;
  var again = false;
  var last = 0;

  function pause(ms) {
    return new Promise(function (resolve) { setTimeout(resolve, ms); });
  }

  function signedOut(resp) {
    if (resp.status === 401) {
      window.location.assign("/console");
      return true;
    }
    return false;
  }

  function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    live.setAttribute("aria-busy", "true");
    pause(Math.max(0, last + MIN_GAP_MS - Date.now()))
      .then(function () {
        last = Date.now();
        return fetch(url, { credentials: "same-origin", cache: "no-store" });
      })
      .then(function (resp) {
        if (signedOut(resp) || !resp.ok) {
          return null;
        }
        return resp.text();
      })
      .then(function (text) {
        if (text !== null) {
          live.innerHTML = text;
          live.setAttribute("data-updated", String(Date.now()));
          if (status) {
            status.textContent = "已更新 " + new Date().toLocaleTimeString("zh-CN", { hour12: false });
          }
        }
      })
      .catch(function () { /* the connection banner says what is wrong */ })
      .then(function () {
        busy = false;
        live.removeAttribute("aria-busy");
        if (again) {
          again = false;
          refresh();
        }
      });
  }

  function offline(yes) {
    banner.hidden = !yes;
    document.body.classList.toggle("offline", yes);
  }

  function connect() {
    var source = new EventSource("/console/events");
    source.addEventListener("open", function () { offline(false); });
    source.addEventListener("change", function (event) {
      offline(false);
      var change = JSON.parse(event.data);
      if (!mine || change.all || change.warnings.indexOf(mine) >= 0) {
        refresh();
      }
    });
    source.addEventListener("error", function () {
      offline(true);
      if (source.readyState === EventSource.CLOSED) {
        // Refused (an HTTP error, say the session ended): the browser will not retry itself.
        source.close();
        pause(RETRY_MS)
          .then(function () { return fetch(url, { credentials: "same-origin", cache: "no-store" }); })
          .then(function (resp) { if (!signedOut(resp)) { connect(); } })
          .catch(function () { pause(RETRY_MS).then(connect); });
      }
    });
  }

  connect();
})();
