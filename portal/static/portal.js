// Live status history on the envelope page: polls the API for statuses newer than the
// last one shown and appends them (text only: nothing from the server becomes markup).
"use strict";
(function () {
  const table = document.getElementById("history");
  if (!table) { return; }
  const kenmerk = table.dataset.kenmerk;
  let last = Number(table.dataset.last || "0");
  const body = table.tBodies[0];
  const cell = (row, text, cls) => {
    const td = row.insertCell();
    td.textContent = text || "";
    if (cls) { td.className = cls; }
  };
  async function poll() {
    try {
      const resp = await fetch(`/api/v1/envelopes/${encodeURIComponent(kenmerk)}/statuses?after=${last}`,
                               { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (resp.ok) {
        const data = await resp.json();
        for (const s of data.items) {
          const row = body.insertRow();
          cell(row, s.code, "code");
          cell(row, s.omschrijving);
          cell(row, s.recipient, "mono");
          cell(row, (s.tijdstempel || "").slice(0, 23).replace("T", " "));
          cell(row, s.foutcode);
          cell(row, s.details, "details");
          last = Math.max(last, s.id);
        }
        table.dataset.last = String(last);
      }
    } catch (e) { /* try again at the next tick */ }
    window.setTimeout(poll, 1500);
  }
  window.setTimeout(poll, 1500);
})();
