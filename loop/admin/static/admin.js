// editloop admin: sends the writes as JSON with the bearer token typed into the header field.
// The token stays in this tab's sessionStorage; it is never put in a cookie.
(function () {
  "use strict";
  var field = document.getElementById("admin-token");
  if (field) {
    field.value = sessionStorage.getItem("editloop-admin-token") || "";
    field.addEventListener("change", function () {
      sessionStorage.setItem("editloop-admin-token", field.value);
    });
  }

  function send(url, body, result) {
    var token = field ? field.value : "";
    result.textContent = "…";
    fetch(url, {
      method: "POST",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
      body: JSON.stringify(body || {}),
      credentials: "omit"
    }).then(function (response) {
      return response.json().then(function (data) {
        result.textContent = response.ok ? data.detail : "error " + response.status + ": " + data.detail;
        if (response.ok && data.changed) { setTimeout(function () { location.reload(); }, 700); }
      });
    }).catch(function (error) { result.textContent = String(error); });
  }

  document.querySelectorAll("button.write").forEach(function (button) {
    button.addEventListener("click", function () {
      if (button.dataset.confirm && !confirm(button.dataset.confirm)) { return; }
      send(button.dataset.url, {}, button.parentNode.querySelector(".write-result"));
    });
  });
  document.querySelectorAll("form.write-form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var body = {};
      new FormData(form).forEach(function (value, key) { body[key] = value; });
      send(form.dataset.url, body, form.querySelector(".write-result"));
    });
  });
})();
