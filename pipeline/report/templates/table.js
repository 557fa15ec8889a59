(function () {
  var holder = document.getElementById("results-data");
  if (!holder) return;
  var data = JSON.parse(holder.textContent), cols = data.columns, rows = data.rows;
  var table = document.getElementById("results"), head = table.tHead.rows[0], body = table.tBodies[0];
  var info = document.getElementById("results-info"), prev = document.getElementById("results-prev"),
      next = document.getElementById("results-next"), perPage = 100, page = 0, sortCol = -1, dir = 1;
  function value(r, i) { return i === 0 ? r[0] : r[i + 1]; }  // r[1] is the track's card link
  function render() {
    var frag = document.createDocumentFragment(), first = page * perPage;
    rows.slice(first, first + perPage).forEach(function (r) {
      var tr = document.createElement("tr");
      cols.forEach(function (c, i) {
        var td = document.createElement("td"), v = value(r, i);
        if (i === 0 && r[1]) {
          var a = document.createElement("a"); a.setAttribute("href", r[1]); a.textContent = v; td.appendChild(a);
        } else if (c[1] === "num") {
          td.className = "n"; td.textContent = v === null ? "" : v.toFixed(c[2]);
        } else {
          td.textContent = v;
        }
        if (i === 0) td.className = "tid";
        tr.appendChild(td);
      });
      frag.appendChild(tr);
    });
    body.textContent = "";
    body.appendChild(frag);
    info.textContent = rows.length ? "rows " + (first + 1) + "–" + Math.min(rows.length, first + perPage) +
                                     " of " + rows.length : "no rows";
    prev.disabled = page === 0;
    next.disabled = first + perPage >= rows.length;
  }
  function sortBy(i, th) {
    dir = sortCol === i ? -dir : 1;
    sortCol = i;
    var numeric = cols[i][1] === "num";
    rows.sort(function (a, b) {
      var x = value(a, i), y = value(b, i);
      if (x === null || y === null) return (x === null) - (y === null);  // missing values last
      return dir * (numeric ? x - y : String(x).localeCompare(String(y)));
    });
    Array.prototype.forEach.call(head.cells, function (h) { delete h.dataset.dir; });
    th.dataset.dir = dir > 0 ? "asc" : "desc";
    page = 0;
    render();
  }
  cols.forEach(function (c, i) {
    var th = document.createElement("th");
    th.textContent = c[0];
    th.addEventListener("click", function () { sortBy(i, th); });
    head.appendChild(th);
  });
  prev.addEventListener("click", function () { page -= 1; render(); });
  next.addEventListener("click", function () { page += 1; render(); });
  render();
})();
