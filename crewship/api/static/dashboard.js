"use strict";
// The live log tail: an EventSource that appends each line as text (never as HTML).
(function () {
  var box = document.getElementById("log");
  var note = document.getElementById("log-state");
  if (!box || !window.EventSource) { return; }
  var MAX_LINES = 1000;
  var source = new EventSource(box.getAttribute("data-stream"));
  source.addEventListener("open", function () {
    box.textContent = "";  // the server sends the tail again on every (re)connect
    note.textContent = "live";
    note.className = "badge s-live";
  });
  source.addEventListener("error", function () {
    note.textContent = source.readyState === EventSource.CLOSED
      ? "stopped: reload the page" : "reconnecting...";
    note.className = "badge s-pending";
  });
  source.addEventListener("message", function (event) {
    var atEnd = box.scrollTop + box.clientHeight >= box.scrollHeight - 8;
    var line = document.createElement("div");
    line.textContent = event.data;
    if (event.data.indexOf(" [system] ") !== -1) { line.className = "system"; }
    box.appendChild(line);
    while (box.childElementCount > MAX_LINES) { box.removeChild(box.firstElementChild); }
    if (atEnd) { box.scrollTop = box.scrollHeight; }
  });
})();
