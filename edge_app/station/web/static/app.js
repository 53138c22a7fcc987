// camtrap station: live alerts (server-sent events), relative times, review keys.
// No framework and nothing from outside the station: it must work offline.
"use strict";
(function () {
  var body = document.body;
  var serverNow = parseFloat(body.getAttribute("data-now") || "0");
  var offset = serverNow ? serverNow - Date.now() / 1000 : 0;

  function agoText(ts) {
    var d = Date.now() / 1000 + offset - ts;
    if (d < -120) return "in the future";
    if (d < 60) return "just now";
    if (d < 3600) return Math.floor(d / 60) + " min ago";
    if (d < 48 * 3600) return Math.floor(d / 3600) + " h ago";
    return Math.floor(d / 86400) + " d ago";
  }
  function refreshAgo() {
    document.querySelectorAll(".ago[data-ts]").forEach(function (el) {
      var ts = parseFloat(el.getAttribute("data-ts"));
      if (isFinite(ts)) el.textContent = agoText(ts);
    });
  }
  setInterval(refreshAgo, 30000);

  var list = document.getElementById("alerts");
  if (list && list.getAttribute("data-live") && window.EventSource) {
    var live = document.getElementById("live");
    var broken = false;
    var source = new EventSource(list.getAttribute("data-live"));
    source.addEventListener("open", function () {
      if (live) live.hidden = false;
      if (broken) {  // missed notices while away: take the list as it is now
        broken = false;
        fetch(location.href, {credentials: "same-origin"}).then(function (r) {
          return r.ok ? r.text() : null;
        }).then(function (html) {
          if (!html) return;
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("alerts");
          if (fresh) list.innerHTML = fresh.innerHTML;
        }).catch(function () {});
      }
    });
    source.addEventListener("error", function () {
      broken = true;
      if (live) live.hidden = true;
    });
    source.addEventListener("alert", function (e) {
      var msg;
      try { msg = JSON.parse(e.data); } catch (err) { return; }
      var tpl = document.createElement("template");
      tpl.innerHTML = msg.html.trim();
      var card = tpl.content.firstElementChild;
      if (!card) return;
      var old = document.getElementById(msg.id);
      if (old) {
        old.replaceWith(card);
      } else {
        var none = document.getElementById("no-alerts");
        if (none) none.remove();
        list.insertBefore(card, list.firstElementChild);
      }
      card.classList.add("fresh");
      refreshAgo();
    });
  }

  // The detail page: when its alert changes (the photo arrived, someone acknowledged it),
  // reload, unless a note is being typed: then only say so.
  var detail = document.getElementById("detail");
  if (detail && window.EventSource) {
    var own = detail.getAttribute("data-id");
    var stream = new EventSource(detail.getAttribute("data-live"));
    stream.addEventListener("alert", function (e) {
      var msg;
      try { msg = JSON.parse(e.data); } catch (err) { return; }
      if (msg.id !== own) return;
      var note = document.getElementById("note");
      if (note && (note.value || document.activeElement === note)) {
        document.getElementById("updated").hidden = false;
      } else {
        stream.close();
        location.reload();
      }
    });
  }

  var review = document.getElementById("review-form");
  if (review) {
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      var t = e.target;
      if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA")) return;
      var btn = review.querySelector('button[data-key="' + e.key.toLowerCase() + '"]');
      if (btn) { e.preventDefault(); btn.click(); }
    });
  }
})();
