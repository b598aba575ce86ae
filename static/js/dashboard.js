// The dashboard: draw the Plotly figures the server prepared, and show the
// custom dates only for a custom period. Everything else is plain GET forms.
(function () {
  "use strict";

  function drawCharts() {
    var source = document.getElementById("dashboard-charts");
    if (!source || !window.Plotly) return;
    var figures = JSON.parse(source.textContent);
    document.querySelectorAll("[data-chart]").forEach(function (element) {
      var figure = figures[element.dataset.chart];
      if (!figure) return;
      window.Plotly.newPlot(element, figure.data, figure.layout, figure.config);
    });
  }

  function toggleCustomDates() {
    var period = document.querySelector("#dashboard-controls select[name=period]");
    if (!period) return;
    function update() {
      var custom = period.value === "custom";
      document.querySelectorAll("[data-custom-dates]").forEach(function (label) {
        var hasError = label.classList.contains("has-error");
        label.hidden = !custom && !hasError;
      });
    }
    period.addEventListener("change", update);
    update();
  }

  // The slices are computed on demand: opening the panel follows its GET link.
  function loadSlicesOnOpen() {
    var link = document.getElementById("slices-link");
    var details = link && link.closest("details");
    if (!details) return;
    details.addEventListener("toggle", function () {
      if (details.open) window.location.href = link.href;
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    toggleCustomDates();
    loadSlicesOnOpen();
    drawCharts();
  });
})();
