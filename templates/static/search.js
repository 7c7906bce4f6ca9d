// Results as you type: /search.json, rendered into the list under the search box.
// Without JavaScript the form still submits to /search.
(function () {
  "use strict";
  var input = document.getElementById("q");
  var live = document.getElementById("live");
  if (!input || !live || !window.fetch) { return; }
  var timer = null, last = "";
  function render(results) {
    live.textContent = "";
    results.forEach(function (r) {
      var li = document.createElement("li"), a = document.createElement("a");
      a.href = r.url;
      a.textContent = r.title;  // text, never HTML
      li.appendChild(a);
      live.appendChild(li);
    });
  }
  input.addEventListener("input", function () {
    var q = input.value.trim();
    clearTimeout(timer);
    if (q.length < 2) { render([]); last = ""; return; }
    timer = setTimeout(function () {
      if (q === last) { return; }
      last = q;
      var url = "/search.json?q=" + encodeURIComponent(q) + "&lang=" + encodeURIComponent(input.dataset.lang || "");
      fetch(url, { headers: { "Accept": "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (data) { if (data.q === last) { render(data.results); } })
        .catch(function () { render([]); });
    }, 150);
  });
})();
