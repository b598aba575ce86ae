/* Funnel settings: reorder stages by dragging or with the ↑/↓ buttons; the form
 * posts the hidden stage ids in their on-screen order. */
(function () {
  "use strict";
  var list = document.getElementById("stage-order");
  if (!list) return;
  if (typeof Sortable !== "undefined") {
    Sortable.create(list, { animation: 120, handle: ".handle", forceFallback: true });
  }
  list.addEventListener("click", function (event) {
    var button = event.target.closest("[data-move]");
    if (!button) return;
    var item = button.closest("li");
    if (button.dataset.move === "up" && item.previousElementSibling) {
      list.insertBefore(item, item.previousElementSibling);
    } else if (button.dataset.move === "down" && item.nextElementSibling) {
      list.insertBefore(item.nextElementSibling, item);
    }
    button.focus();
  });
})();
