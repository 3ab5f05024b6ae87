// Sort the unit grid of a layer page by any stored statistic (plain DOM, no framework).
(function () {
  const grid = document.getElementById("units"), key = document.getElementById("sort-key"),
        dir = document.getElementById("sort-dir");
  if (!grid || !key) return;
  function sort() {
    const k = key.value, sign = dir.value === "desc" ? -1 : 1;
    const cells = Array.from(grid.children);
    cells.sort(function (a, b) {
      const x = a.dataset[k], y = b.dataset[k];
      if (x === "" && y === "") return 0;
      if (x === "") return 1;           // units without the number go last either way
      if (y === "") return -1;
      return sign * (parseFloat(x) - parseFloat(y));
    });
    cells.forEach(function (c) { grid.appendChild(c); });
  }
  key.addEventListener("change", sort);
  dir.addEventListener("change", sort);
})();
