// The live page: upload or pick an image, then run the analyses as server jobs and poll them until done.
(function () {
  const root = document.body.dataset.root, api = root + "api/live/";
  const $ = function (id) { return document.getElementById(id); };
  let image = null, token = 0;

  function message(text) { const m = $("message"); m.textContent = text || ""; m.hidden = !text; }

  function show(id, src) {
    image = id;
    $("input").src = src;
    $("results").hidden = false;
    $("run").disabled = false;
    analyse();
  }

  async function upload(file) {
    message("");
    if (!file) return;
    let response;
    try {
      response = await fetch(api + "images", { method: "POST", body: file,
        headers: { "Content-Type": file.type || "application/octet-stream" } });
    } catch (error) { message("upload failed: " + error); return; }
    let body = {};
    try { body = await response.json(); } catch (error) { body = { error: "the server answered " + response.status }; }
    if (!response.ok) { message(body.error || ("the server answered " + response.status)); return; }
    show(body.id, api + "images/" + body.id + ".png");
  }

  function status(el, text, failed) {
    let s = el.querySelector(".status");
    if (!s) { s = document.createElement("span"); s.className = "status"; el.appendChild(s); }
    s.textContent = text;
    el.classList.toggle("failed", !!failed);
  }

  function clear(el) {
    Array.from(el.querySelectorAll("img, table, .status")).forEach(function (n) { n.remove(); });
  }

  function draw(el, job) {
    clear(el);
    if (job.result && job.result.predictions) {
      const table = document.createElement("table");
      job.result.predictions.forEach(function (p) {
        const row = table.insertRow();
        row.insertCell().textContent = p.name;
        const c = row.insertCell(); c.className = "n"; c.textContent = (100 * p.prob).toFixed(1) + "%";
        const b = row.insertCell(); const t = document.createElement("button"); t.type = "button";
        t.textContent = "explain"; t.onclick = function () { $("target").value = p.index; analyse(["attribution"]); };
        b.appendChild(t);
      });
      el.appendChild(table);
    }
    if (job.image) {
      const img = document.createElement("img");
      img.src = api + "jobs/" + job.id + "/image.png";
      img.alt = job.title || job.kind;
      el.appendChild(img);
    }
    status(el, job.note || ("done in " + job.seconds.toFixed(1) + " s"));
    if (job.kind === "attribution" && job.result && job.result.target_name) $("target-name").textContent = "of " + job.result.target_name;
  }

  async function poll(el, id, mine) {
    while (mine === token) {
      let job;
      try {
        const r = await fetch(api + "jobs/" + id);
        job = await r.json();
        if (!r.ok) { status(el, job.error || ("error " + r.status), true); return; }
      } catch (error) { status(el, "lost the server: " + error, true); return; }
      if (job.status === "done") { draw(el, job); return; }
      if (job.status === "error") { status(el, job.error, true); return; }
      status(el, job.status === "queued" ? "queued (" + job.ahead + " ahead)" : "running " + job.elapsed.toFixed(1) + " s");
      await new Promise(function (ok) { setTimeout(ok, job.status === "queued" ? 400 : 250); });
    }
  }

  async function analyse(kinds) {
    if (!image) return;
    const mine = ++token;
    $("layer-name").textContent = $("layer").value;
    $("target-name").textContent = $("target").value ? "of class " + $("target").value : "of the predicted class";
    document.querySelectorAll(".job").forEach(async function (el) {
      const kind = el.dataset.kind;
      if (kinds && kinds.indexOf(kind) < 0) return;
      clear(el);
      const params = new URLSearchParams({ image: image, analysis: kind });
      if (kind === "activations") params.set("layer", $("layer").value);
      if (kind === "attribution") { params.set("method", el.dataset.method); if ($("target").value) params.set("target", $("target").value); }
      status(el, "starting");
      try {
        const r = await fetch(api + "jobs?" + params.toString(), { method: "POST" });
        const job = await r.json();
        if (!r.ok) { status(el, job.error || ("error " + r.status), true); return; }
        poll(el, job.id, mine);
      } catch (error) { status(el, "could not start: " + error, true); }
    });
  }

  $("file").addEventListener("change", function (e) { upload(e.target.files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", function (e) { e.preventDefault(); });
  drop.addEventListener("drop", function (e) { e.preventDefault(); upload(e.dataTransfer.files[0]); });
  $("run").addEventListener("click", function () { analyse(); });
  $("layer").addEventListener("change", function () { analyse(["activations"]); });
  document.querySelectorAll("button.pick").forEach(function (b) {
    b.addEventListener("click", function () { message(""); show(b.dataset.image, b.dataset.src); });
  });
  const params = new URLSearchParams(location.search);
  if (params.get("layer")) $("layer").value = params.get("layer");
  const start = params.get("image");
  if (start) { const b = document.querySelector('button.pick[data-image="' + CSS.escape(start) + '"]'); if (b) b.click(); }
})();
