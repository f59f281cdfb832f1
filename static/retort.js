// Live updates replace whole sections (hx-swap-oob), which would fold every <details>
// a user unfolded (a stack, say) at the next update. Each <details data-keep="key">
// stays as the user last left it, opened or closed, across those swaps.
(function () {
  "use strict";
  var chosen = {};  // data-keep key -> true (opened) / false (closed), by the user

  document.addEventListener("click", function (event) {
    var summary = event.target.closest ? event.target.closest("summary") : null;
    var details = summary ? summary.parentElement : null;
    if (details && details.matches("details[data-keep]")) {
      chosen[details.dataset.keep] = !details.open;  // the click toggles it after this
    }
  });

  document.addEventListener("htmx:load", function (event) {
    var root = event.detail && event.detail.elt;
    if (!root || !root.querySelectorAll) return;
    root.querySelectorAll("details[data-keep]").forEach(function (details) {
      var open = chosen[details.dataset.keep];
      if (open !== undefined) details.open = open;
    });
  });
})();
