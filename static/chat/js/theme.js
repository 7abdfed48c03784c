// Light and dark themes: the system's by default; a toggle pins one and remembers it.
const KEY = "theme";
const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

export function currentTheme() {
  return document.documentElement.dataset.theme || (systemDark.matches ? "dark" : "light");
}

function remember(theme) {
  try {
    localStorage.setItem(KEY, theme);
  } catch {
    // Not remembered across reloads, but it still applies to this page.
  }
}

function sync(buttons) {
  const dark = currentTheme() === "dark";
  for (const button of buttons) button.setAttribute("aria-pressed", String(dark));
}

export function setupThemeToggles(root = document) {
  const buttons = [...root.querySelectorAll("[data-theme-toggle]")];
  for (const button of buttons) {
    button.addEventListener("click", () => {
      const next = currentTheme() === "dark" ? "light" : "dark";
      document.documentElement.dataset.theme = next;
      remember(next);
      sync(buttons);
    });
  }
  systemDark.addEventListener("change", () => sync(buttons));
  sync(buttons);
}

// Module scripts run once the document is parsed, so every toggle is in the page by now.
setupThemeToggles();
