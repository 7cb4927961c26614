// Placeholder: the real Service Worker is built from web/src.
self.addEventListener("fetch", () => {});
