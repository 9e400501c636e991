// AMS console: the few things a page does by itself. No inline scripts (the CSP forbids them).
"use strict";
document.addEventListener("click", function (event) {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    const source = document.getElementById(copy.dataset.copy);
    if (source && navigator.clipboard) {
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        copy.textContent = "Copied";
        setTimeout(function () { copy.textContent = "Copy"; }, 2000);
      });
    }
    return;
  }
  const hide = event.target.closest("[data-hide]");
  if (hide) {
    const shown = document.getElementById(hide.dataset.hide);
    if (shown) { shown.remove(); }
  }
});
