// The "try it" panel: the same fetch an app makes, with the key pasted into the form.
const form = document.getElementById("try-form");
const show = (id, text) => { document.getElementById(id).textContent = text; };
form.model.addEventListener("change", () => {
  form.body.value = form.model.selectedOptions[0].dataset.example;
});
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  show("try-status", "sending…");
  try {
    const res = await fetch(form.dataset.url, {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        "Authorization": "Bearer " + form.key.value.trim(),
        "X-Model": form.model.value,
      },
      body: form.body.value,
    });
    const data = await res.json();
    show("try-status", res.status + " " + res.statusText);
    show("try-output", JSON.stringify(data.output ?? data.detail));
    show("try-version", data.model_version ?? "-");
    show("try-body", JSON.stringify(data, null, 2));
  } catch (err) {
    show("try-status", "failed: " + err);
  }
});
