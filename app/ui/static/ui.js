// radlens /ui: a little progressive enhancement, nothing the pages need to work.
// The upload button says it is working (a Grad-CAM upload takes a few seconds).
document.addEventListener("DOMContentLoaded", function () {
  var form = document.querySelector("form.upload");
  if (!form) return;
  form.addEventListener("submit", function () {
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    button.textContent = "Predicting…";
    // the button's new text is not announced: a status message is (WCAG 4.1.3)
    var status = document.getElementById("upload-status");
    if (status) status.textContent = "Uploading and predicting; the result opens when it is ready.";
  });
});
