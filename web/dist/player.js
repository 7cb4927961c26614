// Placeholder: the real bundle is built from web/src.
document.getElementById("status").textContent = "blindrelay web player: placeholder bundle loaded";
