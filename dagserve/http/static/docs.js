// Starts Swagger UI on the /docs page (a file, not an inline script: the page's CSP allows only this origin's files).
"use strict";
window.addEventListener("DOMContentLoaded", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null // the default asks validator.swagger.io about the spec: nothing leaves this server
  });
});
