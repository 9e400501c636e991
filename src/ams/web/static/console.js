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

// A live reading of a new password against the rule the service applies (the service still
// decides): its length and how many different characters it has.
document.addEventListener("input", function (event) {
  const field = event.target.closest("[data-strength]");
  if (!field) { return; }
  const out = document.getElementById(field.id + "-strength");
  if (!out) { return; }
  const value = field.value;
  const needed = parseInt(field.dataset.strength, 10) || 12;
  const different = new Set(Array.from(value)).size;
  if (!value) {
    out.textContent = "";
  } else if (value.length < needed) {
    out.textContent = value.length + " characters: at least " + needed + " are needed.";
  } else if (different < 6) {
    out.textContent = "Only " + different + " different characters: use at least 6.";
  } else {
    out.textContent = value.length + " characters, " + different + " different: long enough (common passwords are still refused).";
  }
});
