// A classic (blocking) script in <head>: it runs before the first paint, so a remembered theme
// never flashes the other one. Without a remembered choice the page follows the system.
(function () {
  try {
    var theme = localStorage.getItem("theme");
    if (theme === "light" || theme === "dark") {
      document.documentElement.dataset.theme = theme;
    }
  } catch (error) {
    // Storage can be blocked (private modes, policies); the system theme still applies.
  }
})();
